// Package demo runs mesh end to end on the local cluster, narrating each
// step: the control plane, a node, the controller, two meshed pods whose
// sidecars get SVIDs attested by the API server, a request over mutual TLS,
// a request denied by policy, and the audit log verified. `make demo` runs
// it; so does a test.
package demo

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/mesh-dev/mesh/authz/api/v1alpha1"
	"github.com/mesh-dev/mesh/authz/audit"
	"github.com/mesh-dev/mesh/controlplane/trustbundle"
	"github.com/mesh-dev/mesh/e2e/cluster"
	"github.com/mesh-dev/mesh/e2e/meshtest"
	"github.com/mesh-dev/mesh/e2e/node"
	"github.com/mesh-dev/mesh/e2e/prereq"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Config configures a demo run.
type Config struct {
	// Dir holds the cluster, the node and the controller's files.
	Dir string
	// Out receives the narration.
	Out io.Writer
}

const policy = `apiVersion: security.mesh.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: backend, namespace: shop}
spec:
  selector: {matchLabels: {app: backend}}
  action: ALLOW
  rules:
  - from: [{identities: ["spiffe://cluster.local/ns/shop/sa/frontend"]}]
    to: [{ports: [8080], methods: ["GET"], paths: ["/api/*"]}]
`

// Run runs the demo and returns when it is done, leaving nothing running.
func Run(ctx context.Context, cfg Config) error {
	say := func(format string, args ...any) { fmt.Fprintf(cfg.Out, "==> "+format+"\n", args...) }
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))

	say("starting the local control plane (etcd, kube-apiserver, controller-manager, scheduler)")
	c, err := cluster.New(cluster.Config{Dir: filepath.Join(cfg.Dir, "cluster"), Logger: quiet})
	if err != nil {
		return err
	}
	if err := c.Start(ctx); err != nil {
		return err
	}
	defer c.Stop()
	cs := c.Client()

	say("starting a node agent: pods become processes in network namespaces on bridge %s (%s)", node.Bridge, node.BridgeAddr)
	warn := slog.New(slog.NewTextHandler(cfg.Out, &slog.HandlerOptions{Level: slog.LevelWarn}))
	stopNode, err := meshtest.StartNode(c, filepath.Join(cfg.Dir, "node"), warn)
	if err != nil {
		return err
	}
	defer stopNode()
	if err := installCRDs(ctx, c); err != nil {
		return err
	}
	for _, ns := range []string{"mesh-system", "shop"} {
		if err := meshtest.EnsureNamespace(ctx, cs, ns); err != nil {
			return err
		}
	}
	if err := meshtest.EnsureNamespace(ctx, cs, "shop", "frontend", "backend"); err != nil {
		return err
	}

	say("starting mesh-controller: the CA (kept in Secret mesh-system/mesh-ca), the identity service and the control-plane streams on %s:%d", node.NodeIP, meshtest.IdentityPort)
	ctl, err := meshtest.StartController(c, "mesh-controller-0", fmt.Sprintf("%s:%d", node.NodeIP, meshtest.IdentityPort))
	if err != nil {
		return err
	}
	defer ctl.Kill()
	if err := meshtest.WaitFor(ctx, time.Minute, func() error {
		_, err := cs.CoreV1().ConfigMaps("shop").Get(ctx, trustbundle.ConfigMapName, metav1.GetOptions{})
		return err
	}); err != nil {
		return fmt.Errorf("the controller did not publish the trust bundle in namespace shop: %w\n%s", err, ctl.Log())
	}
	say("the controller published ConfigMap shop/%s: the trust bundle a new proxy starts from", trustbundle.ConfigMapName)

	say("applying this AuthorizationPolicy; the controller compiles it for each pod it selects and streams it to their proxies:\n%s", indent(policy))
	if err := applyPolicy(ctx, c, policy); err != nil {
		return err
	}
	say("creating pods shop/backend and shop/frontend: the echo app with a mesh-proxy sidecar, which takes its policy, destinations and trust bundle from the controller")
	backendIP, err := meshtest.CreateRunning(ctx, cs, meshtest.MeshedPod("shop", "backend", meshtest.PodOptions{}))
	if err != nil {
		return err
	}
	say("backend runs at %s as spiffe://cluster.local/ns/shop/sa/backend", backendIP)
	frontendIP, err := meshtest.CreateRunning(ctx, cs, meshtest.MeshedPod("shop", "frontend", meshtest.PodOptions{}))
	if err != nil {
		return err
	}
	say("frontend runs at %s; the controller told its proxy that %s is backend's, to be reached over mTLS", frontendIP, backendIP)
	policies, err := v1alpha1.NewClient(c.RESTConfig())
	if err != nil {
		return err
	}
	if err := meshtest.WaitFor(ctx, 30*time.Second, func() error {
		p, err := policies.Get(ctx, "shop", "backend")
		if err != nil {
			return err
		}
		if p.Status.Enforced != "1/1" || p.Status.ObservedGeneration != p.Generation {
			return fmt.Errorf("status %+v", p.Status)
		}
		return nil
	}); err != nil {
		return fmt.Errorf("policy status: %w", err)
	}
	say("the policy's status: enforced by 1/1 selected proxies at generation 1 (kubectl get authorizationpolicies shows it)")

	get := func(path string) (string, error) {
		return meshtest.Echo(ctx, "shop", "frontend", "get", "http://"+backendIP+":8080"+path)
	}
	say("the frontend app calls http://%s:8080/api/orders in plain HTTP; iptables sends it through both proxies", backendIP)
	var out string
	if err := meshtest.WaitFor(ctx, time.Minute, func() error {
		var err error
		out, err = get("/api/orders")
		if err != nil || !strings.Contains(out, "peer=spiffe://cluster.local/ns/shop/sa/frontend") {
			return fmt.Errorf("%q: %v", out, err)
		}
		return nil
	}); err != nil {
		return fmt.Errorf("request through the mesh: %w", err)
	}
	say("backend answered: %s", out)
	say("    (the peer identity was verified by mTLS and attested by the API server's TokenReview)")

	say("the frontend app calls /admin, which no ALLOW rule covers")
	out, err = get("/admin")
	if err == nil || !strings.Contains(out, "denied by policy shop/backend") {
		return fmt.Errorf("the denied request was not denied: %q, %v", out, err)
	}
	say("backend's proxy answered: %s", out)

	say("verifying backend's audit log, hash chain and all")
	var logPath string
	matches, _ := filepath.Glob(filepath.Join(cfg.Dir, "node", "pods", "*", "volumes", "audit", "audit.log"))
	for _, m := range matches {
		if b, _ := os.ReadFile(m); bytes.Contains(b, []byte(`"http.path":"/admin"`)) {
			logPath = m
		}
	}
	if logPath == "" {
		return fmt.Errorf("no audit record of the denial in %v", matches)
	}
	// The proxy signs the chain's head with its SVID key within a second
	// of a record (--audit-checkpoint-interval): wait until the denial is
	// anchored by a signed checkpoint.
	cm, err := cs.CoreV1().ConfigMaps("shop").Get(ctx, trustbundle.ConfigMapName, metav1.GetOptions{})
	if err != nil {
		return err
	}
	roots, err := x509bundle.Parse(spiffeid.RequireTrustDomainFromString("cluster.local"), []byte(cm.Data[trustbundle.Key]))
	if err != nil {
		return err
	}
	var res audit.Result
	if err := meshtest.WaitFor(ctx, 30*time.Second, func() error {
		f, err := os.Open(logPath)
		if err != nil {
			return err
		}
		defer f.Close()
		res, err = audit.Verify(f, audit.VerifyOptions{Bundle: roots, Strict: true})
		return err
	}); err != nil {
		return fmt.Errorf("audit log %s: %w", logPath, err)
	}
	if len(res.Streams) == 0 {
		return fmt.Errorf("audit log %s: no stream", logPath)
	}
	say("audit log signed by %s, every record anchored by a signed checkpoint", res.Streams[0].Signer)
	rec, _ := os.ReadFile(logPath)
	say("audit log OK: %d record(s); the denial:\n%s", res.Records, indent(string(rec)))
	say("done: the cluster, node and controller are stopped, nothing is left running")
	return nil
}

func indent(s string) string {
	return "    " + strings.ReplaceAll(strings.TrimRight(s, "\n"), "\n", "\n    ")
}

// installCRDs applies the chart's CRDs, as helm install does.
func installCRDs(ctx context.Context, c *cluster.Cluster) error {
	out, err := exec.CommandContext(ctx, filepath.Join(prereq.ToolsDir(), "kubectl"), "--kubeconfig", c.KubeconfigPath(),
		"apply", "-f", filepath.Join(prereq.RepoRoot(), "charts", "mesh", "crds")).CombinedOutput()
	if err != nil {
		return fmt.Errorf("installing the CRDs: %w: %s", err, out)
	}
	return nil
}

// applyPolicy creates the AuthorizationPolicy in yaml.
func applyPolicy(ctx context.Context, c *cluster.Cluster, yaml string) error {
	cmd := exec.CommandContext(ctx, filepath.Join(prereq.ToolsDir(), "kubectl"), "--kubeconfig", c.KubeconfigPath(), "apply", "-f", "-")
	cmd.Stdin = strings.NewReader(yaml)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("applying the policy: %w: %s", err, out)
	}
	return nil
}
