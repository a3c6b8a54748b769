package proxy_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/mesh-dev/mesh/authz"
	"github.com/mesh-dev/mesh/authz/audit"
	"github.com/mesh-dev/mesh/meshctl"
	"github.com/mesh-dev/mesh/proxy"
)

const backendPolicies = `
apiVersion: security.mesh.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: backend, namespace: shop}
spec:
  selector: {matchLabels: {app: backend}}
  action: ALLOW
  rules:
  - from: [{identities: ["spiffe://cluster.local/ns/shop/sa/frontend"]}]
    to:
    - {ports: [8080], methods: ["GET"], paths: ["/api/*"]}
    - {ports: ["echo"]}
---
apiVersion: security.mesh.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: no-admin, namespace: shop}
spec:
  action: DENY
  rules: [{to: [{ports: [8080], paths: ["/api/admin*"]}]}]
---
apiVersion: security.mesh.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: watch, namespace: shop}
spec:
  action: AUDIT
  rules: [{to: [{ports: [8080], paths: ["/api/audited"]}]}]
`

// auditedEnforcer enforces docs in B's proxy and audits to a log signed
// with B's SVID, as mesh-proxy run does. The function it returns stops the
// writer and returns the log.
func auditedEnforcer(t *testing.T, m *mesh, docs string) (*authz.Enforcer, func() []byte) {
	t.Helper()
	logPath := filepath.Join(t.TempDir(), "audit.log")
	f, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	w, err := audit.New(audit.Config{Out: f, Stream: "shop/backend-0", SVIDs: m.b.src})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	wrote := make(chan error, 1)
	go func() { wrote <- w.Run(ctx) }()
	stopped := false
	stop := func() []byte {
		if !stopped {
			stopped = true
			cancel()
			if err := <-wrote; err != nil {
				t.Fatal(err)
			}
			f.Close()
		}
		raw, err := os.ReadFile(logPath)
		if err != nil {
			t.Fatal(err)
		}
		return raw
	}
	t.Cleanup(func() { stop() })
	return authz.NewEnforcer(table(t, docs), w), stop
}

func table(t *testing.T, docs string) *authz.Table {
	t.Helper()
	ps, err := authz.ParsePolicies([]byte(docs))
	if err != nil {
		t.Fatal(err)
	}
	tbl, err := authz.Compile(authz.Input{
		TrustDomain: clientID.TrustDomain(), MeshDefault: authz.DefaultAllowMesh, Policies: ps,
		Workload: authz.Workload{Namespace: "shop", Pod: "backend-0", Labels: map[string]string{"app": "backend"}, Ports: map[string]uint16{"echo": tcpPort}},
	})
	if err != nil {
		t.Fatal(err)
	}
	return tbl
}

// TestPolicyEnforcement runs real AuthorizationPolicies in B's proxy: an
// allowed request passes, a denied one gets 403 naming the policy, a denied
// gRPC call gets PERMISSION_DENIED, a TCP connection a policy change
// de-authorizes is closed; and each produces a verifiable audit record with
// the right fields.
func TestPolicyEnforcement(t *testing.T) {
	var enf *authz.Enforcer
	var auditLog func() []byte
	m := newMeshFunc(t, proxy.Strict, func(m *mesh) proxy.Authorizer {
		enf, auditLog = auditedEnforcer(t, m, backendPolicies)
		return enf
	})
	base := fmt.Sprintf("http://%s:%d", ipB, httpPort)

	if out, err := m.app(t, "http", "TARGET="+base+"/api/orders"); err != nil || !strings.HasPrefix(out, "hello") {
		t.Fatalf("allowed GET = %q, %v", out, err)
	}
	if out, err := m.app(t, "http", "TARGET="+base+"/api/admin/users"); err != nil || out != "mesh: denied by policy shop/no-admin\n" {
		t.Fatalf("GET /api/admin/users = %q, %v; want the 403 naming shop/no-admin", out, err)
	}
	if out, err := m.app(t, "http", "TARGET="+base+"/private"); err != nil || out != "mesh: denied by policy shop/backend\n" {
		t.Fatalf("GET /private = %q, %v; want the 403 naming shop/backend", out, err)
	}
	if out, err := m.app(t, "http", "TARGET="+base+"/api/audited"); err != nil || !strings.HasPrefix(out, "hello") {
		t.Fatalf("audited GET = %q, %v", out, err)
	}
	if _, err := m.app(t, "grpc", fmt.Sprintf("TARGET=%s:%d", ipB, grpcPort), "MESSAGE=x"); err == nil || !strings.Contains(err.Error(), "PermissionDenied") || !strings.Contains(err.Error(), "shop/backend") {
		t.Fatalf("gRPC = %v; want PermissionDenied naming shop/backend", err)
	}

	// A TCP connection allowed now is closed when a new policy denies it.
	type result struct {
		out string
		err error
	}
	done := make(chan result, 1)
	go func() {
		out, err := m.app(t, "soak", "TARGET_HTTP="+base+"/api/soak", fmt.Sprintf("TARGET_TCP=%s:%d", ipB, tcpPort), "DURATION=10s")
		done <- result{out, err}
	}()
	// Each round is one request to /api/soak, then one exchange on the
	// long-lived connection: a third request at the app means two rounds
	// went through. (A fixed sleep raced the soak's start on a loaded
	// machine: a swap before the first exchange denies the connection
	// outright, which is not the revocation this checks.)
	waitFor(t, 10*time.Second, "two rounds of the soak", func() error {
		n := 0
		for _, r := range m.received(t) {
			if r.RequestURI == "/api/soak" {
				n++
			}
		}
		if n < 3 {
			return fmt.Errorf("the app received %d requests to /api/soak", n)
		}
		return nil
	})
	enf.Swap(table(t, strings.Replace(backendPolicies, `    - {ports: ["echo"]}`+"\n", "", 1)))
	r := <-done
	var soak soakResult
	if r.err != nil || json.Unmarshal([]byte(r.out), &soak) != nil {
		t.Fatalf("soak: %q, %v", r.out, r.err)
	}
	if len(soak.Errors) == 0 || !strings.Contains(soak.Errors[len(soak.Errors)-1], "long-lived") || soak.LongLivedRounds < 2 {
		t.Fatalf("the de-authorized TCP connection was not closed: %+v", soak)
	}

	// And a new TCP connection is now denied: nothing reaches the app.
	if out, err := m.app(t, "tcp", fmt.Sprintf("TARGET=%s:%d", ipB, tcpPort), "MESSAGE=after"); err == nil && out != "" {
		t.Fatalf("TCP after the policy change echoed %q", out)
	}

	raw := auditLog()
	res, err := audit.Verify(bytes.NewReader(raw), audit.VerifyOptions{Bundle: m.pki.Bundle(), Strict: true})
	if err != nil {
		t.Fatalf("the audit log does not verify: %v", err)
	}
	if len(res.Streams) != 1 || res.Streams[0].Signer != serverID || res.Streams[0].Checkpoints == 0 {
		t.Fatalf("verified %+v; want one stream signed by %s", res.Streams, serverID)
	}
	// Re-chained: a denial deleted, another flipped to allow, and every
	// hash recomputed, as someone with write access to the node would.
	// The hash chain alone verifies; the signed checkpoints do not.
	forged := rechain(t, raw, func(recs []map[string]any) []map[string]any {
		var out []map[string]any
		deleted, flipped := false, false
		for _, r := range recs {
			switch {
			case r["event"] == "decision" && r["decision"] == "deny" && !deleted:
				deleted = true
				continue
			case r["event"] == "decision" && r["decision"] == "deny" && !flipped:
				r["decision"], flipped = "allow", true
			}
			out = append(out, r)
		}
		return out
	})
	if _, err := audit.Verify(bytes.NewReader(forged), audit.VerifyOptions{ChainOnly: true}); err != nil {
		t.Fatalf("control: the re-chained log's hash chain should verify: %v", err)
	}
	if _, err := audit.Verify(bytes.NewReader(forged), audit.VerifyOptions{Bundle: m.pki.Bundle()}); err == nil {
		t.Fatal("a re-chained log verified against its signed checkpoints")
	}
	// And as an auditor runs it: meshctl audit verify with the trust bundle.
	dir := t.TempDir()
	bundlePEM, err := m.pki.Bundle().Marshal()
	if err != nil {
		t.Fatal(err)
	}
	files := map[string][]byte{"bundle.pem": bundlePEM, "real.log": raw, "forged.log": forged}
	for name, b := range files {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	meshctlVerify := func(log string) (string, error) {
		cmd := meshctl.New()
		var out bytes.Buffer
		cmd.SetOut(&out)
		cmd.SetErr(&out)
		cmd.SetArgs([]string{"audit", "verify", "--bundle", filepath.Join(dir, "bundle.pem"), filepath.Join(dir, log)})
		err := cmd.Execute()
		return out.String(), err
	}
	if out, err := meshctlVerify("real.log"); err != nil || !strings.Contains(out, "signed by "+serverID.String()) {
		t.Fatalf("meshctl audit verify of the real proxy's log: %v\n%s", err, out)
	}
	if out, err := meshctlVerify("forged.log"); err == nil {
		t.Fatalf("meshctl audit verify passed the re-chained log:\n%s", out)
	}
	var recs []map[string]any
	for _, l := range strings.Split(strings.TrimSpace(string(raw)), "\n") {
		var rec map[string]any
		if err := json.Unmarshal([]byte(l), &rec); err != nil {
			t.Fatal(err)
		}
		recs = append(recs, rec)
	}
	for _, rec := range recs {
		if rec["event"] == "checkpoint" && rec["checkpoint.signer"] != serverID.String() {
			t.Fatalf("checkpoint signed by %v, want %s", rec["checkpoint.signer"], serverID)
		}
	}
	find := func(match map[string]any) map[string]any {
		t.Helper()
	next:
		for _, rec := range recs {
			for k, v := range match {
				if fmt.Sprint(rec[k]) != fmt.Sprint(v) {
					continue next
				}
			}
			return rec
		}
		t.Fatalf("no audit record with %v in:\n%s", match, raw)
		return nil
	}
	admin := find(map[string]any{"http.path": "/api/admin/users"})
	for k, v := range map[string]any{
		"type": "mesh.audit.v1", "decision": "deny", "dryRun": false, "policy": "shop/no-admin", "rule": "0",
		"reason": authz.ReasonDenyRule, "source.identity": clientID.String(), "source.ip": ipA,
		"destination.namespace": "shop", "destination.pod": "backend-0", "destination.port": httpPort,
		"protocol": "http1", "http.method": "GET", "http.status": 403,
	} {
		if fmt.Sprint(admin[k]) != fmt.Sprint(v) {
			t.Errorf("denied request's record: %s = %v, want %v", k, admin[k], v)
		}
	}
	find(map[string]any{"http.path": "/private", "decision": "deny", "policy": "shop/backend", "reason": authz.ReasonNoAllowRule})
	find(map[string]any{"http.path": "/api/audited", "decision": "allow", "audit": "shop/watch", "http.status": 200})
	find(map[string]any{"protocol": "grpc", "decision": "deny", "policy": "shop/backend"})
	tcpDenials := 0
	for _, rec := range recs {
		if rec["protocol"] == "tcp" && rec["decision"] == "deny" && rec["policy"] == "shop/backend" && fmt.Sprint(rec["destination.port"]) == fmt.Sprint(tcpPort) {
			tcpDenials++
		}
	}
	if tcpDenials != 2 {
		t.Fatalf("%d TCP denial records, want 2 (the closed connection and the refused one):\n%s", tcpDenials, raw)
	}
	for _, rec := range recs {
		if rec["http.path"] == "/api/orders" {
			t.Fatal("an allowed, unaudited request was logged without logAllows")
		}
	}
}

// TestNotReadyWithoutPolicy: a proxy whose enforcer has no table yet is not
// ready and denies everything.
func TestNotReadyWithoutPolicy(t *testing.T) {
	enf := authz.NewEnforcer(nil, nil)
	if enf.Ready() {
		t.Fatal("ready without a policy")
	}
	if d := enf.Authorize(&proxy.Request{Peer: clientID, Authenticated: true, DestinationPort: 8080, Protocol: "tcp"}); d.Allow {
		t.Fatal("allowed without a policy")
	}
	enf.Swap(table(t, backendPolicies))
	if !enf.Ready() {
		t.Fatal("not ready with a policy")
	}
}

// rechain rewrites an audit log as a forger would: edit the records, then
// renumber them and recompute every hash so the chain is whole again. The
// lines keep the writer's exact layout; only values change.
func rechain(t *testing.T, raw []byte, edit func([]map[string]any) []map[string]any) []byte {
	t.Helper()
	var recs []map[string]any
	for _, l := range strings.Split(strings.TrimSpace(string(raw)), "\n") {
		var rec map[string]any
		if err := json.Unmarshal([]byte(l), &rec); err != nil {
			t.Fatal(err)
		}
		// Keep the line itself, without its hash, to rewrite in place.
		rec["_line"] = l[:strings.LastIndex(l, `,"hash":"`)]
		recs = append(recs, rec)
	}
	recs = edit(recs)
	seqRe := regexp.MustCompile(`"seq":[0-9]+`)
	prevRe := regexp.MustCompile(`"prevHash":"[0-9a-f]{64}"`)
	var out bytes.Buffer
	prev := audit.Genesis
	for i, rec := range recs {
		line := rec["_line"].(string)
		line = seqRe.ReplaceAllLiteralString(line, fmt.Sprintf(`"seq":%d`, i+1))
		line = prevRe.ReplaceAllLiteralString(line, fmt.Sprintf(`"prevHash":"%s"`, prev))
		if d, ok := rec["decision"].(string); ok {
			line = strings.Replace(line, `"decision":"deny"`, `"decision":"`+d+`"`, 1)
		}
		if rec["event"] == "checkpoint" {
			// Point the checkpoint at the new chain; its signature cannot
			// be redone without the proxy's key.
			line = regexp.MustCompile(`"checkpoint.seq":[0-9]+`).ReplaceAllLiteralString(line, fmt.Sprintf(`"checkpoint.seq":%d`, i))
			line = regexp.MustCompile(`"checkpoint.head":"[0-9a-f]{64}"`).ReplaceAllLiteralString(line, fmt.Sprintf(`"checkpoint.head":"%s"`, prev))
		}
		sum := sha256.Sum256([]byte(line + "}"))
		prev = hex.EncodeToString(sum[:])
		fmt.Fprintf(&out, "%s,\"hash\":\"%s\"}\n", line, prev)
	}
	return out.Bytes()
}
