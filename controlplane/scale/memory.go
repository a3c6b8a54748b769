package scale

import (
	"bytes"
	"fmt"
	"math"
	"runtime"
	"runtime/pprof"
	"strings"
)

// heapInUse is the heap in use after a full collection, and the
// goroutines.
func heapInUse() (uint64, int) {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapInuse, runtime.NumGoroutine()
}

// The controller and the proxies share this process; which side an
// allocation or a goroutine belongs to is read from its stack. A frame of
// the proxies' side is looked for first: their gRPC client calls through
// nothing of the server's.
var (
	proxySide = []string{
		"google.golang.org/grpc/internal/transport.(*http2Client)", "google.golang.org/grpc/internal/transport.NewHTTP2Client",
		"google.golang.org/grpc.(*ClientConn)", "google.golang.org/grpc.NewClient", "google.golang.org/grpc.newClientStream",
		"google.golang.org/grpc.(*clientStream)", "google.golang.org/grpc.(*addrConn)", "google.golang.org/grpc.invoke",
		// Each ClientConn's resolver, balancer and picker callbacks.
		"google.golang.org/grpc/internal/grpcsync.(*CallbackSerializer)",
		"github.com/mesh-dev/mesh/controlplane/scale.(*Fixture)",
	}
	controllerSide = []string{
		"google.golang.org/grpc/internal/transport.(*http2Server)", "google.golang.org/grpc/internal/transport.NewServerTransport",
		"google.golang.org/grpc.(*Server)", "github.com/mesh-dev/mesh/controlplane.", "github.com/mesh-dev/mesh/controlplane/inventory.",
		"k8s.io/client-go/tools/cache.", "k8s.io/client-go/informers.",
	}
)

// side is "proxies", "controller" or "" (the fake API server, the
// test's own setup) for a stack of function names.
func side(funcs []string) string {
	for _, set := range []struct {
		name    string
		markers []string
	}{{"proxies", proxySide}, {"controller", controllerSide}} {
		for _, fn := range funcs {
			for _, m := range set.markers {
				if strings.HasPrefix(fn, m) {
					return set.name
				}
			}
		}
	}
	return ""
}

// heapBySide estimates, from the heap profile after a full
// collection, the live bytes allocated by each side, scaled for sampling
// as pprof does.
func heapBySide() map[string]float64 {
	runtime.GC()
	runtime.GC()
	var recs []runtime.MemProfileRecord
	for n := 1024; ; n *= 2 {
		recs = make([]runtime.MemProfileRecord, n)
		if got, ok := runtime.MemProfile(recs, false); ok {
			recs = recs[:got]
			break
		}
	}
	rate := float64(runtime.MemProfileRate)
	out := map[string]float64{}
	for _, r := range recs {
		if r.InUseBytes() == 0 || r.AllocObjects == 0 {
			continue
		}
		avg := float64(r.AllocBytes) / float64(r.AllocObjects)
		scale := 1 / (1 - math.Exp(-avg/rate))
		var funcs []string
		frames := runtime.CallersFrames(r.Stack())
		for {
			fr, more := frames.Next()
			funcs = append(funcs, fr.Function)
			if !more {
				break
			}
		}
		out[side(funcs)] += float64(r.InUseBytes()) * scale
	}
	return out
}

// goroutinesBySide counts the goroutines of each side from their
// stacks.
func goroutinesBySide() map[string]int {
	var buf bytes.Buffer
	if err := pprof.Lookup("goroutine").WriteTo(&buf, 1); err != nil {
		return nil
	}
	out := map[string]int{}
	// Groups of identical stacks: a line "N @ pcs", then a line
	// "#<tab>pc<tab>function+offset<tab>file:line" per frame.
	for _, group := range strings.Split(buf.String(), "\n\n") {
		lines := strings.Split(group, "\n")
		if strings.HasPrefix(lines[0], "goroutine profile:") {
			lines = lines[1:] // the header, before the first group
		}
		var n int
		if len(lines) == 0 {
			continue
		}
		if _, err := fmt.Sscanf(lines[0], "%d @", &n); err != nil {
			continue
		}
		var funcs []string
		for _, l := range lines[1:] {
			if f := strings.Fields(l); len(f) >= 3 && f[0] == "#" {
				funcs = append(funcs, f[2])
			}
		}
		out[side(funcs)] += n
	}
	return out
}
