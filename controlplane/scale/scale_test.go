package scale_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/mesh-dev/mesh/controlplane/scale"
)

// TestSmallFixture runs the fixture at a size -race can afford, so that
// the code make bench and BenchmarkPolicyPushToLastAck run at 10,000 pods
// is race-checked: every proxy acknowledges each push, the server counts
// them all, and Close stops every goroutine it started.
func TestSmallFixture(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	f, err := scale.Start(ctx, scale.Config{Pods: 200, Proxies: 20})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if f.Config.Pods != 200 || f.Config.Proxies != 20 {
		t.Fatalf("config %+v", f.Config)
	}
	for i := range 3 {
		p, err := f.Push(ctx)
		if err != nil {
			t.Fatalf("push %d: %v", i, err)
		}
		if len(p.Acks) != 20 || p.Last <= 0 {
			t.Fatalf("push %d: %d acks, last %v", i, len(p.Acks), p.Last)
		}
		for j, a := range p.Acks {
			if a <= 0 || a > p.Last {
				t.Fatalf("push %d: proxy %d acked after %v, the last after %v", i, j, a, p.Last)
			}
		}
	}
	// The split by side reads grpc's and the controller's function names
	// from the profiles: a rename would make make bench print 0.
	if m := f.Memory(); m.HeapInUse == 0 || m.Goroutines == 0 || m.ByGoroutines["controller"] == 0 ||
		m.ByHeap["controller"] <= 0 || m.ByHeap["proxies"] <= 0 {
		t.Fatalf("memory %+v", m)
	}
	f.Close()
	f.Close() // twice is allowed
}

func TestConfigBounds(t *testing.T) {
	for _, c := range []scale.Config{{Pods: 10}, {Pods: 200, Proxies: 201}, {Pods: 60_000}, {Proxies: -1}} {
		if _, err := scale.Start(t.Context(), c); err == nil || !strings.Contains(err.Error(), "scale: ") {
			t.Errorf("Start(%+v): %v, want an error", c, err)
		}
	}
}
