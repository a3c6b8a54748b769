package controlplane_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	authnv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/mesh-dev/mesh/authz/api/v1alpha1"

	"github.com/mesh-dev/mesh/authz/api/v1alpha1/crdtest"
	"github.com/mesh-dev/mesh/authz/api/v1alpha1/policyclient"
	"github.com/mesh-dev/mesh/ca"
	"github.com/mesh-dev/mesh/controlplane/trustbundle"
	"github.com/mesh-dev/mesh/e2e/cluster"
	"github.com/mesh-dev/mesh/e2e/clustertest"
	"github.com/mesh-dev/mesh/e2e/meshtest"
	"github.com/mesh-dev/mesh/e2e/node"
	"github.com/mesh-dev/mesh/e2e/prereq"
	"github.com/mesh-dev/mesh/internal/tcpdump"
	"github.com/mesh-dev/mesh/proxy"
)

func TestMain(m *testing.M) { os.Exit(clustertest.Run(m)) }

const ns = "shop"

// The replicas listen on two addresses of the node's bridge; proxies are
// given both.
const secondIP = "198.18.0.2"

var (
	identityAddr  = fmt.Sprintf("%s:%d", node.NodeIP, meshtest.IdentityPort)
	identityAddr2 = fmt.Sprintf("%s:%d", secondIP, meshtest.IdentityPort)
	bothAddrs     = identityAddr + "," + identityAddr2
	proxyArgs     = meshtest.PodOptions{Identity: bothAddrs}
)

// env is one cluster, node agent and controller shared by the subtests,
// which run in order: each leaves the mesh as it found it.
type env struct {
	c        *cluster.Cluster
	cs       kubernetes.Interface
	policies *policyclient.Client
	dir      string
	ctl      *meshtest.Controller
	ips      map[string]string
}

func kubectl(t *testing.T, c *cluster.Cluster, stdin string, args ...string) string {
	t.Helper()
	out, err := crdtest.Kubectl(t, c, stdin, args...)
	if err != nil {
		t.Fatalf("kubectl %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

// TestControlPlane: proxies with no policy or destination flags take
// everything from the controller's streams, on the real local cluster.
func TestControlPlane(t *testing.T) {
	prereq.Command(t, "tcpdump")
	c := clustertest.Get(t)
	ctx := t.Context()
	e := &env{c: c, cs: c.Client(), dir: t.TempDir(), ips: map[string]string{}}
	var err error
	if e.policies, err = policyclient.New(c.RESTConfig()); err != nil {
		t.Fatal(err)
	}
	crdtest.Install(t, c)
	stopNode, err := meshtest.StartNode(c, filepath.Join(e.dir, "node"), slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(stopNode)
	if out, err := exec.Command("ip", "addr", "add", secondIP+"/16", "dev", node.Bridge).CombinedOutput(); err != nil {
		t.Fatalf("second controller address: %v: %s", err, out)
	}
	for _, n := range []string{"mesh-system", ns} {
		if err := meshtest.EnsureNamespace(ctx, e.cs, n); err != nil {
			t.Fatal(err)
		}
	}
	if err := meshtest.EnsureNamespace(ctx, e.cs, ns, "frontend", "backend", "backend2", "strict", "ghost"); err != nil {
		t.Fatal(err)
	}
	// A short SVID lifetime, so that a root rotation completes within the
	// test (the old root can go once no SVID it signed can be valid).
	e.ctl, err = meshtest.StartController(c, "ctl-a", identityAddr, "--svid-ttl", "30s", "--max-svid-ttl", "40s")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		e.ctl.Kill()
		if t.Failed() {
			t.Logf("controller log:\n%s", e.ctl.Log())
		}
	})
	// The leader publishes the bootstrap bundle the pods mount.
	if err := meshtest.WaitFor(ctx, time.Minute, func() error {
		_, err := e.cs.CoreV1().ConfigMaps(ns).Get(ctx, trustbundle.ConfigMapName, metav1.GetOptions{})
		return err
	}); err != nil {
		t.Fatalf("no %s ConfigMap in %s: %v", trustbundle.ConfigMapName, ns, err)
	}
	for _, app := range []string{"backend", "frontend"} {
		ip, err := meshtest.CreateRunning(ctx, e.cs, meshtest.MeshedPod(ns, app, meshtest.PodOptions{Identity: bothAddrs, ProxyArgs: []string{"--opaque-ports", "9000"}}))
		if err != nil {
			t.Fatalf("%s: %v", app, err)
		}
		e.ips[app] = ip
	}
	t.Run("policy", e.testPolicy)
	t.Run("destinations", e.testDestinations)
	t.Run("revocation", e.testRevocation)
	t.Run("root-rotation", e.testRootRotation)
	t.Run("replicas", e.testReplicas)
}

func (e *env) get(ctx context.Context, from, url string) (string, error) {
	return meshtest.Echo(ctx, ns, from, "get", url)
}

// until polls f every 100ms up to bound and reports how long it took.
func until(t *testing.T, bound time.Duration, what string, f func() error) time.Duration {
	t.Helper()
	start := time.Now()
	if err := meshtest.WaitFor(t.Context(), bound, f); err != nil {
		t.Fatalf("%s: not within %s: %v", what, bound, err)
	}
	took := time.Since(start)
	t.Logf("%s: %s", what, took.Round(time.Millisecond))
	return took
}

func (e *env) apply(t *testing.T, yaml string) {
	t.Helper()
	kubectl(t, e.c, yaml, "apply", "-f", "-")
}

// testPolicy: applying, editing and deleting a policy changes what the
// server's proxy allows within 2 s, with no restart, and the policy's
// status says 1/1 proxies enforce its generation.
func (e *env) testPolicy(t *testing.T) {
	ctx := t.Context()
	url := "http://" + e.ips["backend"] + ":8080"
	// The mesh default (allow-mesh) lets the frontend in.
	until(t, time.Minute, "frontend reaches backend under the mesh default", func() error {
		out, err := e.get(ctx, "frontend", url+"/admin")
		if err != nil || !strings.Contains(out, "peer=spiffe://cluster.local/ns/shop/sa/frontend") {
			return fmt.Errorf("%q: %v", out, err)
		}
		return nil
	})
	restarts := e.restarts(t)
	const allowAPI = `apiVersion: security.mesh.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: backend, namespace: shop}
spec:
  selector: {matchLabels: {app: backend}}
  action: ALLOW
  rules:
  - from: [{identities: ["spiffe://cluster.local/ns/shop/sa/frontend"]}]
    to: [{ports: [8080, 9000], paths: ["%s"]}]
`
	denied := func(path string) func() error {
		return func() error {
			out, err := e.get(ctx, "frontend", url+path)
			if err == nil || !strings.Contains(out, "denied by policy shop/backend") {
				return fmt.Errorf("%s not denied by shop/backend: %q, %v", path, out, err)
			}
			return nil
		}
	}
	allowed := func(path string) func() error {
		return func() error {
			out, err := e.get(ctx, "frontend", url+path)
			if err != nil {
				return fmt.Errorf("%s: %q, %v", path, out, err)
			}
			return nil
		}
	}
	// The 2 s bound is read on the proxy's own account of what it
	// enforces: /policy, which it records after swapping its table, polled
	// from the host every 100 ms. A request from the frontend is a new
	// process in its pod, which on a loaded machine takes a good part of
	// 2 s by itself; so the requests come right after, once each, and must
	// already obey the new policy.
	enforces := func(gen int64) func() error {
		return func() error {
			info, raw, err := adminPolicy(e.ips["backend"])
			if err != nil {
				return err
			}
			var want []proxy.PolicyRef
			if gen > 0 {
				want = []proxy.PolicyRef{{Namespace: ns, Name: "backend", Generation: gen}}
			}
			if info.Source != proxy.SourceController || !slices.Equal(info.Policies, want) {
				return fmt.Errorf("backend's /policy = %s, want %v from the controller", raw, want)
			}
			return nil
		}
	}
	obeys := func(checks ...func() error) {
		t.Helper()
		for _, check := range checks {
			if err := check(); err != nil {
				t.Fatal(err)
			}
		}
	}
	e.apply(t, fmt.Sprintf(allowAPI, "/api/*"))
	until(t, 2*time.Second, "backend's proxy enforces the applied policy", enforces(1))
	obeys(denied("/admin"), allowed("/api/orders"))
	e.waitStatus(t, "backend", 1, "1/1")

	e.apply(t, fmt.Sprintf(allowAPI, "/admin"))
	until(t, 2*time.Second, "backend's proxy enforces the edited policy", enforces(2))
	obeys(allowed("/admin"), denied("/api/orders"))
	e.waitStatus(t, "backend", 2, "1/1")
	// The proxy says what it enforces: the policy at the generation the
	// status counts, by name only.
	info, raw, err := adminPolicy(e.ips["backend"])
	if err != nil {
		t.Fatal(err)
	}
	if info.Source != proxy.SourceController || info.Version == "" || info.DefaultMode != "allow-mesh" ||
		!slices.Equal(info.Policies, []proxy.PolicyRef{{Namespace: ns, Name: "backend", Generation: 2}}) {
		t.Errorf("backend's /policy = %s, want shop/backend at generation 2 from the controller", raw)
	}
	if strings.Contains(raw, "frontend") || strings.Contains(raw, "/admin") {
		t.Errorf("backend's /policy shows the policy's rules: %s", raw)
	}

	kubectl(t, e.c, "", "-n", ns, "delete", "authorizationpolicy", "backend")
	until(t, 2*time.Second, "backend's proxy enforces no policy once it is deleted", enforces(0))
	obeys(allowed("/api/orders"))

	// A policy that selects nothing says so.
	e.apply(t, `apiVersion: security.mesh.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: nobody, namespace: shop}
spec:
  selector: {matchLabels: {app: no-such-app}}
  action: ALLOW
  rules: [{from: [{namespaces: [shop]}]}]
`)
	until(t, 10*time.Second, "a policy selecting nothing says so", func() error {
		p, err := e.policies.Get(ctx, ns, "nobody")
		if err != nil {
			return err
		}
		for _, c := range p.Status.Conditions {
			if c.Type == v1alpha1.ConditionResolved && c.Status == metav1.ConditionFalse && c.Reason == v1alpha1.ReasonNoWorkloads {
				return nil
			}
		}
		return fmt.Errorf("status %+v", p.Status)
	})
	out := kubectl(t, e.c, "", "-n", ns, "get", "authorizationpolicies")
	if !strings.Contains(out, "ENFORCED") {
		t.Errorf("kubectl get has no ENFORCED column:\n%s", out)
	}
	kubectl(t, e.c, "", "-n", ns, "delete", "authorizationpolicy", "nobody")
	if now := e.restarts(t); now != restarts {
		t.Errorf("container restarts went from %d to %d: policy changes must not restart pods", restarts, now)
	}
}

// waitStatus waits for policy name's status to show enforced at gen.
func (e *env) waitStatus(t *testing.T, name string, gen int64, enforced string) {
	t.Helper()
	until(t, 15*time.Second, fmt.Sprintf("status of %s shows %s at generation %d", name, enforced, gen), func() error {
		p, err := e.policies.Get(t.Context(), ns, name)
		if err != nil {
			return err
		}
		if p.Generation != gen || p.Status.ObservedGeneration != gen || p.Status.Enforced != enforced {
			return fmt.Errorf("generation %d, status %+v", p.Generation, p.Status)
		}
		return nil
	})
}

// restarts sums the restarts of the shop pods' containers.
func (e *env) restarts(t *testing.T) int32 {
	pods, err := e.cs.CoreV1().Pods(ns).List(t.Context(), metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var n int32
	for _, p := range pods.Items {
		for _, s := range append(p.Status.InitContainerStatuses, p.Status.ContainerStatuses...) {
			n += s.RestartCount
		}
	}
	return n
}

// testDestinations: a pod created after the client's proxy started is
// reached over mTLS with its exact identity; an unmeshed pod is reached
// in plaintext in permissive outbound mode and refused in strict; the
// wire between meshed pods carries only TLS.
func (e *env) testDestinations(t *testing.T) {
	ctx := t.Context()
	capture := tcpdump.Start(t, "", node.Bridge, "tcp and not port 15012")
	ip2, err := meshtest.CreateRunning(ctx, e.cs, meshtest.MeshedPod(ns, "backend2", proxyArgs))
	if err != nil {
		t.Fatal(err)
	}
	until(t, 10*time.Second, "frontend reaches backend2, created after it", func() error {
		out, err := e.get(ctx, "frontend", "http://"+ip2+":8080/late")
		if err != nil || !strings.Contains(out, "hello from backend2") || !strings.Contains(out, "peer=spiffe://cluster.local/ns/shop/sa/frontend") {
			return fmt.Errorf("%q: %v", out, err)
		}
		return nil
	})
	legacyIP, err := meshtest.CreateRunning(ctx, e.cs, meshtest.PlainPod(ns, "legacy"))
	if err != nil {
		t.Fatal(err)
	}
	out, err := e.get(ctx, "frontend", "http://"+legacyIP+":8080/plain")
	if err != nil || !strings.Contains(out, "hello from legacy") || strings.Contains(out, "peer=spiffe") {
		t.Fatalf("permissive outbound to an unmeshed pod: %q, %v", out, err)
	}
	if _, err := meshtest.CreateRunning(ctx, e.cs, meshtest.MeshedPod(ns, "strict", meshtest.PodOptions{Identity: bothAddrs, ProxyArgs: []string{"--outbound-mode", "strict"}})); err != nil {
		t.Fatal(err)
	}
	if out, err := e.get(ctx, "strict", "http://"+legacyIP+":8080/plain"); err == nil {
		t.Fatalf("strict outbound reached an unmeshed pod: %q", out)
	}
	if out, err := e.get(ctx, "strict", "http://"+ip2+":8080/meshed"); err != nil {
		t.Fatalf("strict outbound to a meshed pod: %q, %v", out, err)
	}
	if err := capture.Stop(); err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(capture.Path)
	if err != nil {
		t.Fatal(err)
	}
	// The meshed requests' bytes never appear in clear on the bridge; the
	// unmeshed one's do (the capture works).
	for _, clear := range []string{"GET /late", "hello from backend2", "GET /meshed"} {
		if bytes.Contains(raw, []byte(clear)) {
			t.Errorf("capture of the bridge shows %q in plaintext", clear)
		}
	}
	if !bytes.Contains(raw, []byte("GET /plain")) {
		t.Errorf("capture does not show the unmeshed request: the capture itself is broken (%d bytes)", len(raw))
	}
	for _, p := range []string{"legacy", "strict", "backend2"} {
		_ = e.cs.CoreV1().Pods(ns).Delete(ctx, p, metav1.DeleteOptions{})
	}
}

// hold keeps a TCP connection open from a network namespace (through its
// pod's proxy) and reports when it ends.
type hold struct {
	cmd    *exec.Cmd
	echoes atomic.Int64
	closed chan string
}

func startHold(t *testing.T, cmd *exec.Cmd) *hold {
	h := &hold{cmd: cmd, closed: make(chan string, 1)}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = cmd.Stdout
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	go func() {
		sc := bufio.NewScanner(out)
		last := "exited"
		for sc.Scan() {
			line := sc.Text()
			if strings.HasPrefix(line, "echo ") {
				h.echoes.Add(1)
				continue
			}
			last = line
		}
		h.closed <- last
	}()
	until(t, 10*time.Second, "held connection carries bytes", func() error {
		if h.echoes.Load() < 2 {
			return fmt.Errorf("%d echoes", h.echoes.Load())
		}
		return nil
	})
	return h
}

func (h *hold) waitClosed(t *testing.T, bound time.Duration, what string) {
	t.Helper()
	select {
	case why := <-h.closed:
		t.Logf("%s: connection closed (%s) after %d echoes", what, why, h.echoes.Load())
	case <-time.After(bound):
		t.Fatalf("%s: the connection is still open after %s (%d echoes)", what, bound, h.echoes.Load())
	}
}

// testRevocation: a long-lived TCP connection is cut when a DENY for it
// is applied, and when the calling pod is deleted while its proxy (which
// an attacker may control) keeps the connection open.
func (e *env) testRevocation(t *testing.T) {
	ctx := t.Context()
	echo := filepath.Join(prereq.BinDir(), "mesh-e2e-echo")
	h := startHold(t, meshtest.InPod(ctx, ns, "frontend", echo, "hold", e.ips["backend"]+":9000"))
	e.apply(t, `apiVersion: security.mesh.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: deny-frontend, namespace: shop}
spec:
  selector: {matchLabels: {app: backend}}
  action: DENY
  rules: [{from: [{identities: ["spiffe://cluster.local/ns/shop/sa/frontend"]}], to: [{ports: [9000]}]}]
`)
	h.waitClosed(t, 5*time.Second, "DENY applied")
	kubectl(t, e.c, "", "-n", ns, "delete", "authorizationpolicy", "deny-frontend")

	// The ghost: a pod object on a node that is not ours, whose proxy the
	// test runs by hand, so that deleting the pod does not stop it.
	g := e.startGhost(t)
	h = startHold(t, g.inNetns(ctx, 1000, echo, "hold", e.ips["backend"]+":9000"))
	if err := e.cs.CoreV1().Pods(ns).Delete(ctx, "ghost", metav1.DeleteOptions{GracePeriodSeconds: new(int64)}); err != nil {
		t.Fatal(err)
	}
	h.waitClosed(t, 5*time.Second, "calling pod deleted")
	if g.cmd.ProcessState != nil {
		t.Fatalf("the ghost's proxy exited, so the test proves nothing about the server side:\n%s", g.log.String())
	}
	until(t, 5*time.Second, "backend's audit log records the revocation", func() error {
		logs, _ := filepath.Glob(filepath.Join(e.dir, "node", "pods", "*", "volumes", "audit", "audit.log"))
		for _, l := range logs {
			if b, _ := os.ReadFile(l); bytes.Contains(b, []byte("peer_revoked")) {
				return nil
			}
		}
		return fmt.Errorf("no peer_revoked record in %v", logs)
	})
}

// ghost is a proxy run by hand in a network namespace on the bridge, for
// a pod object that no node agent runs.
type ghost struct {
	netns string
	cmd   *exec.Cmd
	log   meshtest.SyncBuffer
}

const ghostIP = "198.18.100.200"

func (g *ghost) inNetns(ctx context.Context, uid int, args ...string) *exec.Cmd {
	u := fmt.Sprint(uid)
	return exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", g.netns, "setpriv", "--reuid", u, "--regid", u, "--clear-groups", "--"}, args...)...)
}

func (e *env) startGhost(t *testing.T) *ghost {
	ctx := t.Context()
	g := &ghost{netns: "mesh-e2e-ghost"}
	run := func(args ...string) {
		t.Helper()
		if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	_ = exec.Command("ip", "netns", "del", g.netns).Run()
	_ = exec.Command("ip", "link", "del", "ghost0").Run()
	run("ip", "netns", "add", g.netns)
	t.Cleanup(func() {
		_ = exec.Command("ip", "netns", "del", g.netns).Run()
		_ = exec.Command("ip", "link", "del", "ghost0").Run()
	})
	run("ip", "link", "add", "ghost0", "type", "veth", "peer", "name", "ghost1")
	run("ip", "link", "set", "ghost1", "netns", g.netns)
	run("ip", "link", "set", "ghost0", "master", node.Bridge, "up")
	run("ip", "-n", g.netns, "addr", "add", ghostIP+"/16", "dev", "ghost1")
	run("ip", "-n", g.netns, "link", "set", "ghost1", "up")
	run("ip", "-n", g.netns, "link", "set", "lo", "up")

	// The pod's node exists, unschedulable: the pod garbage collector
	// deletes a pod whose node does not exist (after 40 s), which on a
	// slow run would delete the ghost before the test does.
	const ghostNode = "ghost-node"
	_, err := e.cs.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: ghostNode}, Spec: corev1.NodeSpec{Unschedulable: true}}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = e.cs.CoreV1().Nodes().Delete(context.Background(), ghostNode, metav1.DeleteOptions{}) })
	pod := meshtest.MeshedPod(ns, "ghost", meshtest.PodOptions{})
	pod.Spec.NodeName = ghostNode
	created, err := e.cs.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	created.Status = corev1.PodStatus{Phase: corev1.PodRunning, PodIP: ghostIP, PodIPs: []corev1.PodIP{{IP: ghostIP}}}
	if created, err = e.cs.CoreV1().Pods(ns).UpdateStatus(ctx, created, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	exp := int64(3600)
	tok, err := e.cs.CoreV1().ServiceAccounts(ns).CreateToken(ctx, "ghost", &authnv1.TokenRequest{Spec: authnv1.TokenRequestSpec{
		Audiences: []string{"identity.mesh.dev"}, ExpirationSeconds: &exp,
		BoundObjectRef: &authnv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: "ghost", UID: created.UID},
	}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	// The proxy runs as its own user: its files live in a folder of its
	// own (the test's temporary folders are root's alone).
	dir, err := os.MkdirTemp("", "mesh-ghost-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chown(dir, 1337, 1337); err != nil {
		t.Fatal(err)
	}
	cm, err := e.cs.CoreV1().ConfigMaps(ns).Get(ctx, trustbundle.ConfigMapName, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for name, data := range map[string]string{"token": tok.Status.Token, "bundle.pem": cm.Data[trustbundle.Key]} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	bin := filepath.Join(prereq.BinDir(), "mesh-proxy")
	if out, err := exec.Command("ip", "netns", "exec", g.netns, bin, "init", "--proxy-uid", "1337").CombinedOutput(); err != nil {
		t.Fatalf("mesh-proxy init: %v\n%s", err, out)
	}
	g.cmd = g.inNetns(context.Background(), 1337, bin, "run", "--identity-addr", identityAddr, "--bundle", filepath.Join(dir, "bundle.pem"),
		"--token-file", filepath.Join(dir, "token"), "--pod-namespace", ns, "--pod-name", "ghost", "--audit-log", filepath.Join(dir, "audit.log"))
	g.cmd.Stdout, g.cmd.Stderr = &g.log, &g.log
	if err := g.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = g.cmd.Process.Kill(); _ = g.cmd.Wait() })
	until(t, 30*time.Second, "the ghost's proxy is ready", func() error {
		out, err := exec.Command("ip", "netns", "exec", g.netns, "curl", "-sf", "http://127.0.0.1:15020/ready").CombinedOutput()
		if err != nil {
			return fmt.Errorf("%v: %s\nthe ghost's proxy:\n%s", err, out, g.log.String())
		}
		return nil
	})
	return g
}

// testRootRotation: the root is rotated through the documented steps
// while requests flow; proxies take each bundle from the stream; no
// request fails and no pod restarts.
func (e *env) testRootRotation(t *testing.T) {
	ctx := t.Context()
	td := spiffeid.RequireTrustDomainFromString("cluster.local")
	authority, err := ca.New(ctx, ca.Config{TrustDomain: td, SVIDTTL: 30 * time.Second, MaxSVIDTTL: 40 * time.Second,
		Store: &ca.SecretStore{Client: e.cs, Namespace: "mesh-system", Name: "mesh-ca"}})
	if err != nil {
		t.Fatal(err)
	}
	restarts := e.restarts(t)
	var ok, failed atomic.Int64
	var lastErr atomic.Value
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; i < 3000; i++ { // bounded: at most ~5 minutes
			select {
			case <-stop:
				return
			case <-time.After(100 * time.Millisecond):
			}
			out, err := e.get(ctx, "frontend", "http://"+e.ips["backend"]+":8080/rotation")
			if err != nil {
				failed.Add(1)
				lastErr.Store(fmt.Sprintf("%q: %v", out, err))
			} else {
				ok.Add(1)
			}
		}
	}()
	roots := func(want int) func() error {
		return func() error {
			for _, app := range []string{"frontend", "backend"} {
				info, err := adminIdentity(e.ips[app])
				if err != nil {
					return err
				}
				if len(info.BundleRoots) != want {
					return fmt.Errorf("%s trusts %d roots, want %d", app, len(info.BundleRoots), want)
				}
			}
			return nil
		}
	}
	if err := authority.PrepareRoot(ctx); err != nil {
		t.Fatal(err)
	}
	until(t, 10*time.Second, "every proxy trusts the prepared root", roots(2))
	if err := authority.ActivateRoot(ctx); err != nil {
		t.Fatal(err)
	}
	// RetireRoot refuses until no SVID of the old root can be valid.
	until(t, 2*time.Minute, "the old root can be retired", func() error { return authority.RetireRoot(ctx) })
	until(t, 10*time.Second, "every proxy dropped the old root", roots(1))
	time.Sleep(time.Second)
	close(stop)
	wg.Wait()
	if failed.Load() > 0 || ok.Load() < 10 {
		e.proxyLogs(t, "frontend", "backend")
		t.Fatalf("during the rotation %d requests failed and %d succeeded; last failure: %v", failed.Load(), ok.Load(), lastErr.Load())
	}
	t.Logf("%d requests during the rotation, none failed", ok.Load())
	if now := e.restarts(t); now != restarts {
		t.Errorf("container restarts went from %d to %d during the rotation", restarts, now)
	}
}

// proxyLogs logs the warnings and errors of the pods' proxies.
func (e *env) proxyLogs(t *testing.T, pods ...string) {
	for _, p := range pods {
		b, _ := os.ReadFile(filepath.Join(e.dir, "node", "logs", fmt.Sprintf("%s_%s_mesh-proxy.log", ns, p)))
		var lines []string
		for _, l := range strings.Split(string(b), "\n") {
			if strings.Contains(l, `"level":"WARN"`) || strings.Contains(l, `"level":"ERROR"`) {
				lines = append(lines, l)
			}
		}
		t.Logf("%s's proxy, warnings and errors:\n%s", p, strings.Join(lines, "\n"))
	}
}

type identityInfo struct {
	SPIFFEID    string    `json:"spiffeID"`
	NotAfter    time.Time `json:"notAfter"`
	BundleRoots []string  `json:"bundleRoots"`
}

func adminIdentity(ip string) (*identityInfo, error) {
	var info identityInfo
	_, err := adminGet(ip, "/identity", &info)
	return &info, err
}

// adminPolicy reads a proxy's /policy, and returns it raw too.
func adminPolicy(ip string) (*proxy.PolicyInfo, string, error) {
	var info proxy.PolicyInfo
	raw, err := adminGet(ip, "/policy", &info)
	return &info, raw, err
}

// adminGet reads a JSON answer of a proxy's admin port into v, and
// returns it raw.
func adminGet(ip, path string, v any) (string, error) {
	hc := http.Client{Timeout: 2 * time.Second}
	resp, err := hc.Get("http://" + ip + ":15020" + path)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK {
		return string(b), fmt.Errorf("%s: %s", path, resp.Status)
	}
	return string(b), json.Unmarshal(b, v)
}

// testReplicas: with two replicas, killing the leader moves leadership
// within the lease time and the proxies' streams to the other replica;
// with none for a minute, traffic and the last policy keep working, and
// a change made meanwhile applies when a replica returns.
func (e *env) testReplicas(t *testing.T) {
	ctx := t.Context()
	url := "http://" + e.ips["backend"] + ":8080/replicas"
	lease := func() string {
		l, err := e.cs.CoordinationV1().Leases("mesh-system").Get(ctx, "mesh-controller", metav1.GetOptions{})
		if err != nil || l.Spec.HolderIdentity == nil {
			return ""
		}
		return *l.Spec.HolderIdentity
	}
	// SVIDs that outlive a minute with no controller: restart ctl-a with
	// a longer lifetime (the rotation needed short ones) and wait until
	// every proxy renewed.
	e.ctl.Kill()
	var err error
	if e.ctl, err = meshtest.StartController(e.c, "ctl-a", identityAddr, "--svid-ttl", "10m"); err != nil {
		t.Fatal(err)
	}
	until(t, time.Minute, "every proxy holds an SVID valid for 5 more minutes", func() error {
		for _, app := range []string{"frontend", "backend"} {
			info, err := adminIdentity(e.ips[app])
			if err != nil {
				return err
			}
			if time.Until(info.NotAfter) < 5*time.Minute {
				return fmt.Errorf("%s's SVID expires at %s", app, info.NotAfter)
			}
		}
		return nil
	})
	until(t, 10*time.Second, "ctl-a leads", func() error {
		if h := lease(); h != "ctl-a" {
			return fmt.Errorf("holder %q", h)
		}
		return nil
	})
	// A second replica, on the second address: not the leader, but it
	// serves Certify and the streams.
	b, err := meshtest.StartController(e.c, "ctl-b", identityAddr2, "--svid-ttl", "10m")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		b.Kill()
		if t.Failed() {
			t.Logf("ctl-b log:\n%s", b.Log())
		}
	})
	killed := time.Now()
	e.ctl.Kill()
	until(t, 10*time.Second, "ctl-b leads after the leader was killed", func() error {
		if h := lease(); h != "ctl-b" {
			return fmt.Errorf("holder %q", h)
		}
		return nil
	})
	t.Logf("leadership moved %s after the kill (lease 4s)", time.Since(killed).Round(100*time.Millisecond))
	if _, err := e.get(ctx, "frontend", url); err != nil {
		t.Fatalf("traffic with the proxies' controller gone: %v", err)
	}
	// The streams moved to ctl-b: a policy change reaches the proxies.
	e.apply(t, `apiVersion: security.mesh.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: on-b, namespace: shop}
spec:
  selector: {matchLabels: {app: backend}}
  action: DENY
  rules: [{to: [{paths: ["/on-b"]}]}]
`)
	until(t, 30*time.Second, "a change applies through the other replica", func() error {
		out, err := e.get(ctx, "frontend", "http://"+e.ips["backend"]+":8080/on-b")
		if err == nil || !strings.Contains(out, "denied by policy shop/on-b") {
			return fmt.Errorf("%q, %v", out, err)
		}
		return nil
	})
	kubectl(t, e.c, "", "-n", ns, "delete", "authorizationpolicy", "on-b")
	// Certify keeps answering: a new pod gets its SVID from ctl-b.
	if _, err := meshtest.CreateRunning(ctx, e.cs, meshtest.MeshedPod(ns, "backend2", proxyArgs)); err != nil {
		t.Fatalf("a pod created with only ctl-b running: %v", err)
	}
	// Zero replicas for a minute: traffic and the last policy keep
	// working.
	b.Kill()
	time.Sleep(5 * time.Second)
	if out, err := e.get(ctx, "frontend", url); err != nil {
		t.Fatalf("traffic with no controller: %q, %v", out, err)
	}
	e.apply(t, `apiVersion: security.mesh.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: while-away, namespace: shop}
spec:
  selector: {matchLabels: {app: backend}}
  action: DENY
  rules: [{to: [{paths: ["/while-away"]}]}]
`)
	time.Sleep(time.Minute)
	if out, err := e.get(ctx, "frontend", url); err != nil {
		t.Fatalf("traffic after a minute with no controller: %q, %v", out, err)
	}
	if out, err := e.get(ctx, "frontend", "http://"+e.ips["backend"]+":8080/while-away"); err != nil {
		t.Fatalf("a change made with no controller applied without one: %q, %v", out, err)
	}
	// A replica returns on the proxies' address: they reconnect and
	// resync, and the change made meanwhile applies.
	e.ctl, err = meshtest.StartController(e.c, "ctl-c", identityAddr, "--svid-ttl", "10m")
	if err != nil {
		t.Fatal(err)
	}
	until(t, 30*time.Second, "the change made while no controller ran applies once one returns", func() error {
		out, err := e.get(ctx, "frontend", "http://"+e.ips["backend"]+":8080/while-away")
		if err == nil || !strings.Contains(out, "denied by policy shop/while-away") {
			return fmt.Errorf("%q, %v", out, err)
		}
		return nil
	})
	kubectl(t, e.c, "", "-n", ns, "delete", "authorizationpolicy", "while-away")
}
