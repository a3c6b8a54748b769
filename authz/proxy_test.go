package authz_test

import (
	"bytes"
	"context"
	"net/netip"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/mesh-dev/mesh/authz"
	"github.com/mesh-dev/mesh/authz/audit"
	"github.com/mesh-dev/mesh/proxy"
)

// TestLogAllowsSampling: allowed requests are audited only with LogAllows,
// one in SampleAllows; denials always are.
func TestLogAllowsSampling(t *testing.T) {
	count := func(logAllows bool, sample uint64) audit.Result {
		var buf bytes.Buffer
		w, err := audit.New(audit.Config{Out: &buf, Stream: "s"})
		if err != nil {
			t.Fatal(err)
		}
		e := authz.NewEnforcer(compile(t, authz.DefaultAllowMesh, backend(nil), ""), w)
		e.LogAllows, e.SampleAllows = logAllows, sample
		allowed := &proxy.Request{Peer: spiffeid.RequireFromString(frontend), Authenticated: true, Source: netip.MustParseAddrPort("198.18.0.9:4000"), DestinationPort: 8080, Protocol: "tcp"}
		denied := &proxy.Request{Source: netip.MustParseAddrPort("198.18.0.9:4001"), DestinationPort: 8080, Protocol: "tcp"}
		for range 10 {
			e.Observe(allowed, e.Authorize(allowed), 0)
		}
		e.Observe(denied, e.Authorize(denied), 0)
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		if err := w.Run(ctx); err != nil {
			t.Fatal(err)
		}
		res, err := audit.Verify(&buf, audit.VerifyOptions{ChainOnly: true})
		if err != nil {
			t.Fatal(err)
		}
		return res
	}
	if got := count(false, 0).Records; got != 1 {
		t.Errorf("without logAllows: %d records, want 1 (the denial)", got)
	}
	if got := count(true, 0).Records; got != 11 {
		t.Errorf("logAllows: %d records, want 11", got)
	}
	if got := count(true, 5).Records; got != 3 {
		t.Errorf("logAllows sampling 1 in 5: %d records, want 3", got)
	}
}
