package authz_test

import (
	"bytes"
	"context"
	"net/netip"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"
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

// TestObserveRecordsTheEnforcedDecision: the audit record says what the
// proxy enforced, even if the policy changed before the response ended.
func TestObserveRecordsTheEnforcedDecision(t *testing.T) {
	var buf bytes.Buffer
	w, err := audit.New(audit.Config{Out: &buf, Stream: "s"})
	if err != nil {
		t.Fatal(err)
	}
	deny := `
apiVersion: security.mesh.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: no-admin, namespace: shop}
spec:
  action: DENY
  rules: [{to: [{paths: ["/admin"]}]}]
`
	e := authz.NewEnforcer(compile(t, authz.DefaultAllowMesh, backend(nil), deny), w)
	req := &proxy.Request{Peer: spiffeid.RequireFromString(frontend), Authenticated: true, Source: netip.MustParseAddrPort("198.18.0.9:4000"),
		DestinationPort: 8080, Protocol: "http1", HTTP: &proxy.HTTPRequest{Method: "GET", Path: "/admin"}}
	d := e.Authorize(req)
	// The policy is lifted while the denial is being answered.
	e.Swap(compile(t, authz.DefaultAllowMesh, backend(nil), ""))
	e.Observe(req, d, 403)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := w.Run(ctx); err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(buf.Bytes(), []byte(`"decision":"deny","dryRun":false,"policy":"shop/no-admin"`)) {
		t.Fatalf("the record is not the enforced denial:\n%s", buf.Bytes())
	}
}

// TestWarningsMetric: the gauge follows the table in force.
func TestWarningsMetric(t *testing.T) {
	bad := `
apiVersion: security.mesh.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: p, namespace: shop}
spec:
  action: DENY
  rules: [{to: [{ports: ["nope"]}]}]
`
	e := authz.NewEnforcer(compile(t, authz.DefaultAllowMesh, backend(nil), bad), nil)
	g := e.WarningsMetric()
	if got := testutil.ToFloat64(g); got != 1 {
		t.Fatalf("warnings = %v, want 1", got)
	}
	e.Swap(compile(t, authz.DefaultAllowMesh, backend(nil), ""))
	if got := testutil.ToFloat64(g); got != 0 {
		t.Fatalf("warnings after a clean table = %v, want 0", got)
	}
}

// TestRefusedRecords: refusals become audit records: an inbound one names
// the caller, an outbound one (a peer with the wrong identity) names where
// the workload tried to go and whom it expected there.
func TestRefusedRecords(t *testing.T) {
	var buf bytes.Buffer
	w, err := audit.New(audit.Config{Out: &buf, Stream: "s"})
	if err != nil {
		t.Fatal(err)
	}
	e := authz.NewEnforcer(compile(t, authz.DefaultAllowMesh, backend(nil), ""), w)
	e.Refused(proxy.Refusal{Direction: "inbound", Reason: "plaintext_in_strict_mode",
		Source: netip.MustParseAddrPort("198.18.0.9:4000"), Destination: netip.MustParseAddrPort("198.18.0.20:8080"), Suppressed: 3})
	e.Refused(proxy.Refusal{Direction: "outbound", Reason: "wrong_identity", Detail: "wrong_identity: peer is other",
		Source: netip.MustParseAddrPort("198.18.0.20:5000"), Destination: netip.MustParseAddrPort("198.18.0.30:9090"),
		Peer: spiffeid.RequireFromString(prometheus)})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := w.Run(ctx); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) != 2 {
		t.Fatalf("%d records, want 2:\n%s", len(lines), buf.String())
	}
	for i, want := range [][]string{
		{`"event":"refused"`, `"decision":"deny"`, `"reason":"plaintext_in_strict_mode"`, `"source.ip":"198.18.0.9"`, `"destination.namespace":"shop"`, `"destination.port":8080`, `"suppressed":3`},
		{`"event":"refused"`, `"reason":"wrong_identity"`, `"direction":"outbound"`, `"source.ip":"198.18.0.20"`, `"destination.ip":"198.18.0.30"`, `"destination.port":9090`, `"destination.identity":"` + prometheus + `"`},
	} {
		for _, field := range want {
			if !strings.Contains(lines[i], field) {
				t.Errorf("record %d lacks %s:\n%s", i, field, lines[i])
			}
		}
	}
	if strings.Contains(lines[1], "source.identity") {
		t.Errorf("the outbound refusal names the expected peer as its source:\n%s", lines[1])
	}
}
