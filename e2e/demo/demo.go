// Package demo runs mesh end to end on the local cluster, the way a user
// meets it: it starts the cluster (control plane and node agent) in the
// background, installs the chart with helm, deploys a small application in
// two meshed namespaces and one unmeshed pod with kubectl, applies a
// zero-trust policy set from examples/, and narrates what the mesh does:
// calls by Service name over mutual TLS, a denial and its audit record, the
// outsider refused, the policies' status, a pod's identity. The cluster is
// left running for the user (Down stops it). `make demo` runs Up; a test
// runs it too.
package demo

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/mesh-dev/mesh/controlplane/trustbundle"
	"github.com/mesh-dev/mesh/e2e/meshtest"
	"github.com/mesh-dev/mesh/e2e/prereq"
)

// Config configures a demo run.
type Config struct {
	// Dir holds the demo's cluster (its folder is Dir/cluster). Required.
	Dir string
	// Out receives the narration. Zero means os.Stdout.
	Out io.Writer
	// Root is mesh's source tree, where charts/mesh and examples/ are. Zero
	// means the first folder up from the working directory with mesh's
	// go.mod.
	Root string
}

// Steps' bounds. A cold machine builds nothing here (make does that
// first), so these bound waiting on the cluster only.
const (
	installTimeout = 5 * time.Minute
	rolloutTimeout = 3 * time.Minute
)

type demo struct {
	cfg        Config
	out        io.Writer
	kubeconfig string
	cs         kubernetes.Interface
}

// ClusterDir is where Up keeps the cluster of a demo in dir.
func ClusterDir(dir string) string { return filepath.Join(dir, "cluster") }

// Up runs the demo and leaves its cluster running. Run twice, it starts
// again from a new cluster.
func Up(ctx context.Context, cfg Config) error {
	if cfg.Dir == "" {
		return errors.New("demo: Config.Dir is required")
	}
	if cfg.Out == nil {
		cfg.Out = os.Stdout
	}
	if cfg.Root == "" {
		root, err := findRoot()
		if err != nil {
			return err
		}
		cfg.Root = root
	}
	dir, err := filepath.Abs(cfg.Dir)
	if err != nil {
		return fmt.Errorf("demo: %w", err)
	}
	cfg.Dir = dir
	d := &demo{cfg: cfg, out: cfg.Out}
	return d.run(ctx)
}

// Down stops the cluster of a demo in dir, if one runs.
func Down(ctx context.Context, dir string) error {
	cmd := exec.CommandContext(ctx, filepath.Join(prereq.BinDir(), "mesh-cluster"), "down", "--dir", ClusterDir(dir))
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("demo: mesh-cluster down: %w\n%s", err, out)
	}
	return nil
}

func (d *demo) say(format string, args ...any) {
	fmt.Fprintf(d.out, "\n==> "+format+"\n", args...)
}

func (d *demo) note(format string, args ...any) {
	for _, l := range strings.Split(fmt.Sprintf(format, args...), "\n") {
		fmt.Fprintf(d.out, "    %s\n", l)
	}
}

// sh runs a command as a user would type it, printing it and its output.
func (d *demo) sh(ctx context.Context, name string, args ...string) (string, error) {
	shown := append([]string{filepath.Base(name)}, args...)
	fmt.Fprintf(d.out, "$ %s\n", strings.Join(shown, " "))
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = d.cfg.Root
	cmd.Env = append(os.Environ(), "KUBECONFIG="+d.kubeconfig)
	out, err := cmd.CombinedOutput()
	indenter{d.out}.Write(out)
	if err != nil {
		return string(out), fmt.Errorf("%s: %w", strings.Join(shown, " "), err)
	}
	return string(out), nil
}

func (d *demo) kubectl(ctx context.Context, args ...string) (string, error) {
	return d.sh(ctx, filepath.Join(prereq.ToolsDir(), "kubectl"), args...)
}

func (d *demo) helm(ctx context.Context, args ...string) (string, error) {
	return d.sh(ctx, filepath.Join(prereq.ToolsDir(), "helm"), args...)
}

func (d *demo) meshctl(ctx context.Context, args ...string) (string, error) {
	return d.sh(ctx, filepath.Join(prereq.BinDir(), "meshctl"), args...)
}

// inPod runs one of the echo app's client modes inside a pod's network
// namespace, as the pod's application would (its traffic is intercepted by
// the pod's proxy, if it has one).
func (d *demo) inPod(ctx context.Context, ns, pod string, args ...string) (string, error) {
	fmt.Fprintf(d.out, "[in pod %s/%s] $ %s\n", ns, pod, strings.Join(append([]string{"mesh-e2e-echo"}, args...), " "))
	cctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	cmd := meshtest.InPod(cctx, ns, pod, append([]string{filepath.Join(prereq.BinDir(), "mesh-e2e-echo")}, args...)...)
	out, err := cmd.CombinedOutput()
	indenter{d.out}.Write(out)
	return string(out), err
}

func (d *demo) run(ctx context.Context) error {
	d.say("starting the local cluster in the background: etcd, kube-apiserver, controller-manager, scheduler,\n    and a node agent that runs pods as processes in network namespaces, with kube-proxy and CoreDNS")
	if _, err := d.sh(ctx, filepath.Join(prereq.BinDir(), "mesh-cluster"), "up", "--background", "--dir", ClusterDir(d.cfg.Dir)); err != nil {
		return err
	}
	d.kubeconfig = filepath.Join(ClusterDir(d.cfg.Dir), "kubeconfig")
	rc, err := clientcmd.BuildConfigFromFlags("", d.kubeconfig)
	if err != nil {
		return fmt.Errorf("demo: kubeconfig: %w", err)
	}
	if d.cs, err = kubernetes.NewForConfig(rc); err != nil {
		return fmt.Errorf("demo: %w", err)
	}
	if _, err := d.kubectl(ctx, "get", "nodes", "-o", "wide"); err != nil {
		return err
	}

	d.say("installing mesh with helm. defaultPolicy=deny makes the mesh zero-trust: a request no policy allows is refused")
	if _, err := d.helm(ctx, "install", "mesh", "charts/mesh", "-n", "mesh-system", "--create-namespace",
		"--set", "defaultPolicy=deny", "--wait", "--timeout", installTimeout.String()); err != nil {
		return err
	}
	d.note("the controller runs 2 replicas: the CA (root and issuer in Secret mesh-system/mesh-ca), the identity service,\nthe control-plane streams to every proxy, and the injection and policy webhooks")
	if _, err := d.kubectl(ctx, "get", "pods", "-n", "mesh-system", "-o", "wide"); err != nil {
		return err
	}

	d.say("deploying the app: frontend and backend in namespace shop, ledger (TCP) in payments, both labelled\n    mesh.dev/inject=enabled; and pod outsider in namespace outside, which is not meshed")
	if _, err := d.kubectl(ctx, "apply", "-f", "examples/demo/app.yaml"); err != nil {
		return err
	}
	d.say("applying the policy set: backend answers frontend's GET /api/*, ledger answers backend, frontend answers its namespace")
	if _, err := d.kubectl(ctx, "apply", "-f", "examples/policies/"); err != nil {
		return err
	}
	for _, dep := range []string{"shop/frontend", "shop/backend", "payments/ledger"} {
		ns, name, _ := strings.Cut(dep, "/")
		if _, err := d.kubectl(ctx, "rollout", "status", "-n", ns, "deployment/"+name, "--timeout", rolloutTimeout.String()); err != nil {
			return err
		}
	}
	if _, err := d.kubectl(ctx, "wait", "-n", "outside", "pod/outsider", "--for=condition=Ready", "--timeout", rolloutTimeout.String()); err != nil {
		return err
	}
	frontend, err := d.firstPod(ctx, "shop", "app=frontend")
	if err != nil {
		return err
	}
	backend, err := d.firstPod(ctx, "shop", "app=backend")
	if err != nil {
		return err
	}
	d.say("the webhook injected the proxy: an init container that sets up iptables, and the proxy as a native sidecar")
	if _, err := d.kubectl(ctx, "get", "pod", "-n", "shop", frontend, "-o",
		`jsonpath=init containers: {.spec.initContainers[*].name}{"\n"}containers: {.spec.containers[*].name}{"\n"}`); err != nil {
		return err
	}

	d.say("frontend calls backend by its Service name, in plain HTTP; the two proxies carry it over mutual TLS")
	if _, err := d.retryInPod(ctx, "shop", frontend, "peer=spiffe://cluster.local/ns/shop/sa/frontend", "get", "http://backend.shop.svc.cluster.local:8080/api/orders"); err != nil {
		return err
	}
	d.note("backend's proxy verified the caller's certificate: peer=spiffe://cluster.local/ns/shop/sa/frontend")

	d.say("backend calls the ledger over raw TCP, across namespaces, by its short Service name")
	if _, err := d.retryInPod(ctx, "shop", backend, "debit 42", "tcp", "ledger.payments:9000", "debit 42"); err != nil {
		return err
	}

	d.say("frontend asks backend for /admin: no policy allows it, so backend's proxy refuses it with 403")
	out, err := d.inPod(ctx, "shop", frontend, "get", "http://backend.shop.svc.cluster.local:8080/admin")
	if err == nil || !strings.Contains(out, "denied by policy") {
		return fmt.Errorf("demo: the request to /admin was not denied: %v\n%s", err, out)
	}

	d.say("the denial is in the denying proxy's hash-chained audit log (a file on the pod's mesh-audit volume),\n    signed at checkpoints with the proxy's SVID; meshctl verifies the chain and the signatures")
	logPath, rec, err := d.findAudit(ctx, "/admin")
	if err != nil {
		return err
	}
	d.note("the record:\n%s", rec)
	if err := d.waitVerified(ctx, logPath); err != nil {
		return err
	}

	d.say("the outsider has no identity: frontend's proxy accepts only mutual TLS from the mesh (strict mode)")
	out, err = d.inPod(ctx, "outside", "outsider", "get", "http://frontend.shop.svc.cluster.local/")
	if err == nil {
		return fmt.Errorf("demo: the outsider was let in: %s", out)
	}
	d.note("refused: the connection was reset before any HTTP answer")

	d.say("the policies' status: accepted by the controller, enforced by every selected proxy")
	if err := d.waitEnforced(ctx); err != nil {
		return err
	}
	if _, err := d.kubectl(ctx, "get", "authorizationpolicies", "-A"); err != nil {
		return err
	}

	d.say("who is backend to the mesh? meshctl asks its proxy, through the API server")
	if _, err := d.meshctl(ctx, "identity", "show", "-n", "shop", "pod/"+backend); err != nil {
		return err
	}

	d.say("is the whole install healthy? meshctl check: the API, the controller, the webhooks, the CA and every proxy")
	if _, err := d.meshctl(ctx, "check", "--wait", "1m"); err != nil {
		return err
	}

	fmt.Fprintf(d.out, `
==> done. The cluster is still running; use it:

export KUBECONFIG=%s
export PATH=%s:%s:$PATH   # kubectl, helm and meshctl

Then try:
  kubectl get pods -A                                   # the app, the controller, CoreDNS
  kubectl get authorizationpolicies -A -o wide          # policies and their status
  meshctl identity show -n shop deploy/backend          # the SVIDs the proxies serve
  meshctl audit logs -n shop pod/<backend pod> -f       # its denials as they happen
  meshctl ca show                                       # the CA's roots and issuers
  meshctl check                                         # the whole install, checked
  kubectl -n shop logs deploy/backend -c mesh-proxy     # the proxy's log
  kubectl -n shop edit authorizationpolicy backend-api  # change a rule; calls follow within a second
Stop it with: make demo-down
`, d.kubeconfig, prereq.ToolsDir(), prereq.BinDir())
	return nil
}

// retryInPod runs a client in a pod until its output contains want: the
// first calls of a new pod can race its Service's endpoints and DNS.
func (d *demo) retryInPod(ctx context.Context, ns, pod, want string, args ...string) (string, error) {
	deadline := time.Now().Add(time.Minute)
	for {
		out, err := d.inPod(ctx, ns, pod, args...)
		if err == nil && strings.Contains(out, want) {
			return out, nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return out, fmt.Errorf("demo: %s in %s/%s: %v: %s", strings.Join(args, " "), ns, pod, err, out)
		}
		fmt.Fprintln(d.out, "    (not yet; retrying)")
		time.Sleep(2 * time.Second)
	}
}

func (d *demo) firstPod(ctx context.Context, ns, selector string) (string, error) {
	pods, err := d.cs.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: selector})
	if err != nil {
		return "", fmt.Errorf("demo: pods %s in %s: %w", selector, ns, err)
	}
	for _, p := range pods.Items {
		if p.DeletionTimestamp == nil && p.Status.PodIP != "" {
			return p.Name, nil
		}
	}
	return "", fmt.Errorf("demo: no running pod %s in %s", selector, ns)
}

// findAudit finds the audit log on the node holding a record of path, and
// returns its path and that record.
func (d *demo) findAudit(ctx context.Context, path string) (string, string, error) {
	pattern := filepath.Join(ClusterDir(d.cfg.Dir), "node", "pods", "*", "volumes", "mesh-audit", "audit.log")
	var found, rec string
	err := meshtest.WaitFor(ctx, 30*time.Second, func() error {
		matches, _ := filepath.Glob(pattern)
		for _, m := range matches {
			f, err := os.Open(m)
			if err != nil {
				continue
			}
			sc := bufio.NewScanner(f)
			sc.Buffer(make([]byte, 64<<10), 1<<20)
			for sc.Scan() {
				if strings.Contains(sc.Text(), `"http.path":"`+path+`"`) {
					found, rec = m, sc.Text()
				}
			}
			f.Close()
		}
		if found == "" {
			return fmt.Errorf("no record of %s in %d audit logs (%s)", path, len(matches), pattern)
		}
		return nil
	})
	if err != nil {
		return "", "", fmt.Errorf("demo: %w", err)
	}
	return found, rec, nil
}

// waitVerified runs meshctl audit verify once the log's last record is
// anchored by a signed checkpoint (the proxy signs within its checkpoint
// interval), and shows the run that passed.
func (d *demo) waitVerified(ctx context.Context, logPath string) error {
	bundle := filepath.Join(d.cfg.Dir, "trust-bundle.pem")
	args := []string{"audit", "verify", "--bundle", bundle, "--strict", logPath}
	var lastErr error
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(time.Second) {
		cm, err := d.cs.CoreV1().ConfigMaps("shop").Get(ctx, trustbundle.ConfigMapName, metav1.GetOptions{})
		if err != nil {
			lastErr = err
			continue
		}
		if err := os.WriteFile(bundle, []byte(cm.Data[trustbundle.Key]), 0o644); err != nil {
			return fmt.Errorf("demo: %w", err)
		}
		out, err := exec.CommandContext(ctx, filepath.Join(prereq.BinDir(), "meshctl"), args...).CombinedOutput()
		if err != nil {
			lastErr = fmt.Errorf("%w: %s", err, out)
			continue
		}
		fmt.Fprintf(d.out, "$ meshctl %s\n", strings.Join(args, " "))
		indenter{d.out}.Write(out)
		return nil
	}
	return fmt.Errorf("demo: audit log %s did not verify: %w", logPath, lastErr)
}

// waitEnforced waits until every policy of the demo reports that all the
// proxies it selects enforce its current generation.
func (d *demo) waitEnforced(ctx context.Context) error {
	return meshtest.WaitFor(ctx, time.Minute, func() error {
		out, err := exec.CommandContext(ctx, filepath.Join(prereq.ToolsDir(), "kubectl"), "--kubeconfig", d.kubeconfig,
			"get", "authorizationpolicies", "-A", "-o", `jsonpath={range .items[*]}{.metadata.name}={.status.enforced}@{.status.observedGeneration}/{.metadata.generation}{"\n"}{end}`).CombinedOutput()
		if err != nil {
			return fmt.Errorf("%w: %s", err, out)
		}
		for _, l := range strings.Fields(string(out)) {
			name, st, _ := strings.Cut(l, "=")
			enf, gen, _ := strings.Cut(st, "@")
			obs, cur, _ := strings.Cut(gen, "/")
			n, m, _ := strings.Cut(enf, "/")
			if n == "" || n != m || n == "0" || obs != cur {
				return fmt.Errorf("policy %s: enforced %q at generation %s of %s", name, enf, obs, cur)
			}
		}
		return nil
	})
}

// findRoot is the nearest folder up from the working directory holding
// mesh's go.mod.
func findRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", fmt.Errorf("demo: %w", err)
	}
	for {
		if b, err := os.ReadFile(filepath.Join(dir, "go.mod")); err == nil && bytes.Contains(b, []byte("module github.com/mesh-dev/mesh\n")) {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("demo: mesh's source tree not found above the working directory (run from the repository)")
		}
		dir = parent
	}
}

// indenter indents what it is given by four spaces per line.
type indenter struct{ w io.Writer }

func (i indenter) Write(p []byte) (int, error) {
	s := strings.TrimRight(string(p), "\n")
	if s == "" {
		return len(p), nil
	}
	_, err := fmt.Fprintf(i.w, "    %s\n", strings.ReplaceAll(s, "\n", "\n    "))
	return len(p), err
}
