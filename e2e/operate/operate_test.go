// Package operate_test operates a helm-installed mesh with meshctl, as a
// platform team does, on the local cluster: an SVID renewal seen by
// `identity show` and on the wire, `policy check` against what the proxies
// decide and audit, `audit logs` and `audit verify` of a real proxy's log
// and of a tampered copy, and `ca show` and `ca rotate` (refused while a
// proxy lags, then resumed and finished under traffic without a failed
// request). SVIDs live 30 s and the CA signs none longer than a minute,
// so a whole root rotation fits in the test.
package operate_test

import (
	"context"
	"encoding/json"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/mesh-dev/mesh/authz/audit"
	"github.com/mesh-dev/mesh/ca"
	"github.com/mesh-dev/mesh/controlplane/castatus"
	"github.com/mesh-dev/mesh/controlplane/trustbundle"
	"github.com/mesh-dev/mesh/e2e/clustertest"
	"github.com/mesh-dev/mesh/e2e/helminstall"
	"github.com/mesh-dev/mesh/e2e/load"
	"github.com/mesh-dev/mesh/e2e/meshtest"
	"github.com/mesh-dev/mesh/e2e/node"
	"github.com/mesh-dev/mesh/e2e/prereq"
	"github.com/mesh-dev/mesh/meshctl"
)

func TestMain(m *testing.M) { os.Exit(clustertest.Run(m)) }

const (
	ns        = "shop"
	outside   = "outside" // not injected
	clientID  = "spiffe://cluster.local/ns/shop/sa/client"
	serverURL = "http://server.shop.svc.cluster.local:8080"
)

const policy = `apiVersion: security.mesh.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: server, namespace: shop}
spec:
  selector: {matchLabels: {app: server}}
  action: ALLOW
  rules:
  - from: [{identities: ["spiffe://cluster.local/ns/shop/sa/client"]}]
    to: [{ports: [8080], methods: ["GET"], paths: ["/", "/api/*", "/status/*"]}]
`

type env struct {
	*helminstall.Mesh
	client  string   // the client pod
	servers []string // the server pods
}

func TestOperate(t *testing.T) {
	prereq.Command(t, "openssl")
	m := helminstall.Start(t, clustertest.Get(t))
	m.Install(t, "identity.svidTTL=30s", "identity.maxSVIDTTL=1m")
	e := &env{Mesh: m}
	e.deploy(t)
	if t.Failed() {
		return
	}
	t.Run("renewal-changes-the-serial", e.testRenewal)
	t.Run("policy-check-agrees-with-the-proxy", e.testPolicyCheck)
	t.Run("ca-show", e.testCAShow)
	t.Run("ca-rotate-refused-while-a-proxy-lags", e.testRotateRefused)
	t.Run("ca-rotate-under-traffic", e.testRotateUnderTraffic)
	t.Run("ca-rotate-issuer", e.testRotateIssuer)
}

// meshctl runs meshctl and fails the test unless it exits with want; it
// returns the standard output, and with a non-zero want the error too.
func (e *env) meshctl(t *testing.T, want int, args ...string) string {
	t.Helper()
	out, stderr, code, err := e.MeshctlSplit(t.Context(), args...)
	if err != nil || code != want {
		t.Fatalf("meshctl %s: exit %d (want %d), %v\n%s%s", strings.Join(args, " "), code, want, err, out, stderr)
	}
	t.Logf("$ meshctl %s\n%s%s", strings.Join(args, " "), out, stderr)
	if want != 0 {
		return out + stderr
	}
	return out
}

func (e *env) deploy(t *testing.T) {
	ctx := t.Context()
	e.Namespace(t, ns, true)
	e.DeployEcho(t, ns, helminstall.EchoApp{Name: "server", Replicas: 2, Service: true}, helminstall.EchoApp{Name: "client", Replicas: 1})
	// An unmeshed pod, from whose network namespace openssl reads what a
	// server's proxy presents (a meshed pod's own proxy would intercept).
	e.Namespace(t, outside, false)
	if _, err := meshtest.CreateRunning(ctx, e.Kube, meshtest.PlainPod(outside, "observer")); err != nil {
		t.Fatal(err)
	}
	e.Apply(t, policy)
	pods, err := e.Kube.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range pods.Items {
		switch p.Labels["app"] {
		case "client":
			e.client = p.Name
		case "server":
			e.servers = append(e.servers, p.Name)
		}
	}
	if e.client == "" || len(e.servers) != 2 {
		t.Fatalf("pods: client %q, servers %v", e.client, e.servers)
	}
	e.WaitEnforced(t, ns, "server", "2/2")
}

func (e *env) identity(t *testing.T, pod string) meshctl.PodIdentity {
	t.Helper()
	id, err := e.readIdentity(t.Context(), pod)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// readIdentity is identity for retry loops: one read through the API
// server's pods/proxy may fail on a loaded machine, and the loop reads
// again.
func (e *env) readIdentity(ctx context.Context, pod string) (meshctl.PodIdentity, error) {
	out, code, err := e.Meshctl(ctx, "identity", "show", "-n", ns, "pod/"+pod, "-o", "json")
	var id meshctl.PodIdentity
	if err != nil || code != 0 {
		return id, fmt.Errorf("meshctl identity show pod/%s: exit %d, %v\n%s", pod, code, err, out)
	}
	if err := json.Unmarshal([]byte(out), &id); err != nil {
		return id, fmt.Errorf("meshctl identity show pod/%s: %w\n%s", pod, err, out)
	}
	return id, nil
}

func (e *env) podIP(t *testing.T, pod string) string {
	t.Helper()
	p, err := e.Kube.CoreV1().Pods(ns).Get(t.Context(), pod, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return p.Status.PodIP
}

// testRenewal: identity show's serialNumber is what the proxy presents on
// the wire, and both change when the proxy renews its SVID.
func (e *env) testRenewal(t *testing.T) {
	ctx := t.Context()
	pod := e.servers[0]
	addr := e.podIP(t, pod) + ":8080"
	netns := node.NetnsName(outside, "observer")
	first := e.identity(t, pod)
	wire, err := helminstall.WireSerial(ctx, netns, addr)
	if err != nil {
		t.Fatal(err)
	}
	if want, _ := new(big.Int).SetString(first.SerialNumber, 16); want == nil || wire.Cmp(want) != 0 {
		t.Fatalf("on the wire %x, identity show %s", wire, first.SerialNumber)
	}
	// A 30 s SVID is renewed within about 15 s of its arrival.
	var next meshctl.PodIdentity
	if err := meshtest.WaitFor(ctx, time.Minute, func() error {
		var err error
		if next, err = e.readIdentity(ctx, pod); err != nil {
			return err
		}
		if next.SerialNumber == first.SerialNumber {
			return fmt.Errorf("serial still %s (last renewal %s)", first.SerialNumber, first.LastRenewal)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if !next.LastRenewal.After(first.LastRenewal) || !next.NotAfter.After(first.NotAfter) || !next.Healthy {
		t.Fatalf("after renewal: %+v, before: %+v", next, first)
	}
	// The wire follows; a renewal may land between the two reads, so read
	// both again until they agree on a serial other than the first.
	if err := meshtest.WaitFor(ctx, time.Minute, func() error {
		id, err := e.readIdentity(ctx, pod)
		if err != nil {
			return err
		}
		wire, err := helminstall.WireSerial(ctx, netns, addr)
		if err != nil {
			return err
		}
		want, _ := new(big.Int).SetString(id.SerialNumber, 16)
		if id.SerialNumber == first.SerialNumber || want == nil || wire.Cmp(want) != 0 {
			return fmt.Errorf("on the wire %x, identity show %s, first %s", wire, id.SerialNumber, first.SerialNumber)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	t.Logf("pod %s renewed: serial %s → %s, on the wire too", pod, first.SerialNumber, next.SerialNumber)
}

// testPolicyCheck: policy check's decision for an allowed and a denied
// request is what the server's proxy does, and for the denied one it names
// the policy and rule the proxy's audit record names. The audit log read
// through the API verifies, and a tampered copy does not.
func (e *env) testPolicyCheck(t *testing.T) {
	ctx := t.Context()
	server := e.servers[0]
	url := "http://" + e.podIP(t, server) + ":8080"
	check := func(path string, exit int) meshctl.Verdict {
		args := []string{"policy", "check", "-n", ns, "--from", "pod/" + e.client, "--to", "pod/" + server, "--port", "8080", "--method", "GET", "--path", path, "-o", "json"}
		out, stderr, code, err := e.MeshctlSplit(ctx, args...)
		if err != nil || code != exit {
			t.Fatalf("meshctl %s: exit %d (want %d), %v\n%s%s", strings.Join(args, " "), code, exit, err, out, stderr)
		}
		var v meshctl.Verdict
		if err := json.Unmarshal([]byte(out), &v); err != nil {
			t.Fatalf("policy check: %v\n%s", err, out)
		}
		return v
	}
	allowed := check("/api/orders", 0)
	if out, err := helminstall.InPod(ctx, 20*time.Second, ns, e.client, "get", url+"/api/orders"); err != nil || !strings.Contains(out, "peer="+clientID) {
		t.Fatalf("the allowed request: %v: %s", err, out)
	}
	if allowed.Decision != "ALLOW" || allowed.Policy != "shop/server" {
		t.Fatalf("policy check of the allowed request: %+v", allowed)
	}
	// Beside the controller's policy, what the server's proxy enforces:
	// the same.
	if allowed.ProxyCurrent == nil || !*allowed.ProxyCurrent || allowed.ProxyPolicyVersion != allowed.PolicyVersion {
		t.Fatalf("policy check: the server's proxy enforces %q (current %v), the controller pushes %q", allowed.ProxyPolicyVersion, allowed.ProxyCurrent, allowed.PolicyVersion)
	}
	denied := check("/admin", 1)
	if denied.Decision != "DENY" {
		t.Fatalf("policy check of the denied request: %+v", denied)
	}
	out, err := helminstall.InPod(ctx, 20*time.Second, ns, e.client, "get", url+"/admin")
	if err == nil || !strings.Contains(out, "denied by policy "+denied.Policy) {
		t.Fatalf("the denied request: %v: %s", err, out)
	}

	// The server proxy's record of it, read through the API server, names
	// what policy check named; wait for a checkpoint to sign it.
	var lines []string
	var rec audit.Record
	if err := meshtest.WaitFor(ctx, time.Minute, func() error {
		out, code, err := e.Meshctl(ctx, "audit", "logs", "-n", ns, "pod/"+server, "-o", "jsonl")
		if err != nil || code != 0 {
			return fmt.Errorf("audit logs: exit %d, %v: %s", code, err, out)
		}
		lines = strings.Split(strings.TrimSpace(out), "\n")
		found, signed := false, false
		for _, l := range lines {
			var r audit.Record
			if err := json.Unmarshal([]byte(l), &r); err != nil {
				return fmt.Errorf("audit logs printed a line that is not a record: %q", l)
			}
			if r.HTTPPath == "/admin" {
				found, rec = true, r
			} else if found && r.Event == audit.EventCheckpoint {
				signed = true
			}
		}
		if !found || !signed {
			return fmt.Errorf("no signed record of GET /admin yet in %d lines", len(lines))
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if !strings.EqualFold(rec.Decision, denied.Decision) || rec.Policy != denied.Policy || rec.Rule != denied.Rule || rec.SourceIdentity != clientID || rec.HTTPStatus != 403 {
		t.Fatalf("the proxy audited %+v; policy check said %+v", rec, denied)
	}
	t.Logf("policy check and the audit record agree: %s by %s (rule %q): %s", rec.Decision, rec.Policy, rec.Rule, rec.Reason)
	table := e.meshctl(t, 0, "audit", "logs", "-n", ns, "pod/"+server)
	if !strings.Contains(table, "GET /admin") || !strings.Contains(table, denied.Policy) || !strings.Contains(table, "checkpoint") {
		t.Fatalf("audit logs' table lacks the record:\n%s", table)
	}

	// audit verify: the log as read passes, with the bundle the mesh
	// publishes; a copy with one path changed fails.
	dir := t.TempDir()
	cm, err := e.Kube.CoreV1().ConfigMaps(ns).Get(ctx, trustbundle.ConfigMapName, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	bundle, logFile, tampered := filepath.Join(dir, "bundle.pem"), filepath.Join(dir, "audit.jsonl"), filepath.Join(dir, "tampered.jsonl")
	log := strings.Join(lines, "\n") + "\n"
	for f, data := range map[string]string{bundle: cm.Data[trustbundle.Key], logFile: log, tampered: strings.Replace(log, `"http.path":"/admin"`, `"http.path":"/"`, 1)} {
		if err := os.WriteFile(f, []byte(data), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if out := e.meshctl(t, 0, "audit", "verify", "--bundle", bundle, logFile); !strings.Contains(out, "OK") {
		t.Fatalf("audit verify: %s", out)
	}
	if out := e.meshctl(t, 1, "audit", "verify", "--bundle", bundle, tampered); !strings.Contains(out, "hash") {
		t.Fatalf("audit verify of the tampered copy does not say what broke: %s", out)
	}
}

func (e *env) caStatus(t *testing.T) castatus.Document {
	t.Helper()
	out, code, err := e.Meshctl(t.Context(), "ca", "show", "-o", "json")
	var d castatus.Document
	if err != nil || code != 0 || json.Unmarshal([]byte(out), &d) != nil {
		t.Fatalf("meshctl ca show -o json: exit %d, %v\n%s", code, err, out)
	}
	return d
}

func (e *env) testCAShow(t *testing.T) {
	d := e.caStatus(t)
	active, ok := d.Root(ca.RoleActive)
	if !ok || len(d.Roots) != 1 || d.Issuer.Root != active.Fingerprint || d.External || d.TrustDomain != "cluster.local" || d.MaxSVIDTTL != time.Minute {
		t.Fatalf("ca show: %+v", d)
	}
	// The proxies trust that root and serve SVIDs under it.
	if id := e.identity(t, e.client); !slices.Equal(id.BundleRoots, []string{active.Fingerprint}) || id.SignedByRoot != active.Fingerprint {
		t.Fatalf("the client's proxy: bundle %v, signed by %s; CA root %s", id.BundleRoots, id.SignedByRoot, active.Fingerprint)
	}
	out := e.meshctl(t, 0, "ca", "show")
	for _, want := range []string{"Trust domain:", "none under way", "active", "root", "issuer", active.Fingerprint[:12]} {
		if !strings.Contains(out, want) {
			t.Fatalf("ca show lacks %q:\n%s", want, out)
		}
	}
	out = e.meshctl(t, 0, "ca", "rotate", "--dry-run")
	if !strings.Contains(out, "prepare-root") || !strings.Contains(out, "Nothing was changed") {
		t.Fatalf("ca rotate --dry-run:\n%s", out)
	}
	if after := e.caStatus(t); !slices.Equal(fingerprints(after.Roots), fingerprints(d.Roots)) || after.Issuer.Fingerprint != d.Issuer.Fingerprint {
		t.Fatalf("--dry-run changed the CA: %+v", after)
	}
}

func fingerprints(cs []ca.CertStatus) []string {
	var out []string
	for _, c := range cs {
		out = append(out, c.Role+":"+c.Fingerprint)
	}
	return out
}

// testRotateRefused: a running meshed pod whose proxy does not answer
// (here a sidecar named mesh-proxy that is a shell) stops the rotation
// before activation: meshctl cannot tell that it trusts the new root.
func (e *env) testRotateRefused(t *testing.T) {
	ctx := t.Context()
	const stuckNS = "stuck"
	e.Namespace(t, stuckNS, false)
	always := corev1.ContainerRestartPolicyAlways
	stuck := meshtest.PlainPod(stuckNS, "stuck")
	// A shell that serves nothing: not the echo app, which would take the
	// app container's port 8080 in the shared network namespace.
	stuck.Spec.InitContainers = []corev1.Container{{Name: "mesh-proxy", Image: node.ToolsImage, Command: []string{"sh", "-c", "while :; do sleep 1; done"}, RestartPolicy: &always}}
	if _, err := meshtest.CreateRunning(ctx, e.Kube, stuck); err != nil {
		t.Fatal(err)
	}
	before := e.caStatus(t)
	out := e.meshctl(t, 1, "ca", "rotate", "--timeout", "15s", "--poll", "1s")
	if !strings.Contains(out, "✔ prepare-root") || !strings.Contains(out, "stopped before activating it") || !strings.Contains(out, "stuck/stuck") || strings.Contains(out, "activate-root:") {
		t.Fatalf("ca rotate with a lagging proxy:\n%s", out)
	}
	d := e.caStatus(t)
	active, _ := d.Root(ca.RoleActive)
	was, _ := before.Root(ca.RoleActive)
	if _, prepared := d.Root(ca.RolePrepared); !prepared || active.Fingerprint != was.Fingerprint || d.Issuer.Fingerprint != before.Issuer.Fingerprint {
		t.Fatalf("after the refused rotation the CA is %+v; want the new root prepared and nothing activated", d)
	}
	if out := e.meshctl(t, 0, "ca", "show"); !strings.Contains(out, "is prepared") {
		t.Fatalf("ca show does not say a root is prepared:\n%s", out)
	}
	grace := int64(0)
	if err := e.Kube.CoreV1().Pods(stuckNS).Delete(ctx, "stuck", metav1.DeleteOptions{GracePeriodSeconds: &grace}); err != nil {
		t.Fatal(err)
	}
	if err := meshtest.WaitFor(ctx, time.Minute, func() error {
		if _, err := e.Kube.CoreV1().Pods(stuckNS).Get(ctx, "stuck", metav1.GetOptions{}); err == nil {
			return fmt.Errorf("pod stuck/stuck is still there")
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

// testRotateUnderTraffic: the rotation resumes from the prepared root and
// runs through every step while the client calls the server through its
// Service: no request fails.
func (e *env) testRotateUnderTraffic(t *testing.T) {
	ctx := t.Context()
	before := e.caStatus(t)
	prepared, ok := before.Root(ca.RolePrepared)
	old, _ := before.Root(ca.RoleActive)
	if !ok {
		t.Fatalf("no prepared root to resume from: %+v", before.Roots)
	}
	type result struct {
		l   load.Summary
		err error
	}
	done := make(chan result, 1)
	go func() {
		// 10,000 calls at 100/s, each on a new application connection:
		// 100 s, longer than the rotation and inside the load mode's own
		// 2-minute bound. Every tenth asks the server for a 503, which the
		// load counts as a success.
		l, err := helminstall.Load(ctx, 4*time.Minute, ns, e.client, "http-load", serverURL, "10000", "4", "100", "close")
		done <- result{l, err}
	}()
	time.Sleep(3 * time.Second)
	start := time.Now()
	out := e.meshctl(t, 0, "ca", "rotate", "--timeout", "4m", "--poll", "1s")
	t.Logf("ca rotate took %s", time.Since(start).Round(time.Second))
	for _, want := range []string{"resuming: a new root is already prepared", "proxies trust the new root", "✔ activate-root", "proxies serve an SVID signed under the new root", "✔ retire-root", "no longer trust the old root", "Rotation complete"} {
		if !strings.Contains(out, want) {
			t.Fatalf("ca rotate output lacks %q:\n%s", want, out)
		}
	}
	r := <-done
	if r.err != nil {
		t.Fatal(r.err)
	}
	if r.l.Failed != 0 || r.l.Calls != 10000 {
		t.Fatalf("%d of %d requests failed during the rotation: %v", r.l.Failed, r.l.Calls, r.l.Errors)
	}
	after := e.caStatus(t)
	active, _ := after.Root(ca.RoleActive)
	if len(after.Roots) != 1 || active.Fingerprint != prepared.Fingerprint || after.Issuer.Root != prepared.Fingerprint {
		t.Fatalf("after the rotation: %+v; want only the prepared root %s, active", after.Roots, prepared.Fingerprint)
	}
	for _, pod := range append([]string{e.client}, e.servers...) {
		id := e.identity(t, pod)
		if !slices.Equal(id.BundleRoots, []string{active.Fingerprint}) || id.SignedByRoot != active.Fingerprint {
			t.Fatalf("pod %s after the rotation: bundle %v, signed by %s; want only %s (old root %s)", pod, id.BundleRoots, id.SignedByRoot, active.Fingerprint, old.Fingerprint)
		}
	}
	t.Logf("rotated under %d requests, none failed", r.l.Calls)
}

func (e *env) testRotateIssuer(t *testing.T) {
	before := e.caStatus(t)
	out := e.meshctl(t, 0, "ca", "rotate", "--issuer", "--timeout", "2m")
	if !strings.Contains(out, "✔ rotated the issuer") {
		t.Fatalf("ca rotate --issuer:\n%s", out)
	}
	after := e.caStatus(t)
	if after.Issuer.Fingerprint == before.Issuer.Fingerprint || after.Issuer.Root != before.Issuer.Root || !slices.Equal(fingerprints(after.Roots), fingerprints(before.Roots)) {
		t.Fatalf("ca rotate --issuer: before %+v, after %+v", before, after)
	}
	// Proxies move to it as they renew.
	if err := meshtest.WaitFor(t.Context(), time.Minute, func() error {
		id, err := e.readIdentity(t.Context(), e.client)
		if err != nil {
			return err
		}
		if id.Issuer != after.Issuer.Subject {
			return fmt.Errorf("the client's SVID is issued by %q, not %q", id.Issuer, after.Issuer.Subject)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}
