// Package helminstall runs mesh the way users do, for end-to-end tests: a
// node agent on the local cluster, the helm binary with charts/mesh, and
// kubectl and meshctl from the command line. Tests that need the product
// as installed (e2e/install, e2e/check, e2e/operate) share it, so each
// runs its tools with the same environment.
package helminstall

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/mesh-dev/mesh/authz/api/v1alpha1/policyclient"
	"github.com/mesh-dev/mesh/e2e/cluster"
	"github.com/mesh-dev/mesh/e2e/meshtest"
	"github.com/mesh-dev/mesh/e2e/prereq"
)

// Namespace is where the tests install the chart.
const Namespace = "mesh-system"

// Mesh is a local cluster with a node agent, on which a test installs and
// operates mesh with the command-line tools.
type Mesh struct {
	Cluster *cluster.Cluster
	Kube    kubernetes.Interface
	// Chart is the absolute path of charts/mesh.
	Chart string
}

// Start checks the prerequisites every helm-installed test has, and starts
// a node agent (with kube-proxy and CoreDNS) on c until the test ends.
func Start(t *testing.T, c *cluster.Cluster) *Mesh {
	t.Helper()
	prereq.Root(t)
	for _, b := range []string{"mesh-controller", "mesh-proxy", "mesh-e2e-echo", "meshctl"} {
		prereq.Bin(t, b)
	}
	for _, tool := range []string{"helm", "kubectl", "kube-proxy", "coredns"} {
		prereq.Tool(t, tool)
	}
	m := &Mesh{Cluster: c, Kube: c.Client(), Chart: filepath.Join(prereq.RepoRoot(), "charts", "mesh")}
	stop, err := meshtest.StartNode(c, filepath.Join(t.TempDir(), "node"), slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(stop)
	t.Cleanup(func() {
		if t.Failed() {
			m.DumpControllers(t)
		}
	})
	return m
}

// Install runs `helm install mesh charts/mesh --wait` into Namespace, with
// each of sets as a --set.
func (m *Mesh) Install(t *testing.T, sets ...string) {
	t.Helper()
	args := []string{"install", "mesh", m.Chart, "-n", Namespace, "--create-namespace", "--wait", "--timeout", "4m"}
	for _, s := range sets {
		args = append(args, "--set", s)
	}
	start := time.Now()
	m.MustRun(t, "helm", args...)
	t.Logf("helm install --wait: %s", time.Since(start).Round(time.Second))
}

// Run runs one of the pinned tools (helm, kubectl) against the cluster,
// with stdin as its input, and returns its combined output.
func (m *Mesh) Run(ctx context.Context, stdin, tool string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, filepath.Join(prereq.ToolsDir(), tool), args...)
	dir := m.Cluster.Dir()
	cmd.Env = append(os.Environ(), "KUBECONFIG="+m.Cluster.KubeconfigPath(), "HELM_CACHE_HOME="+filepath.Join(dir, "helm-cache"),
		"HELM_CONFIG_HOME="+filepath.Join(dir, "helm-config"), "HELM_DATA_HOME="+filepath.Join(dir, "helm-data"))
	cmd.Stdin = strings.NewReader(stdin)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// MustRun is Run without input, failing the test if the tool fails.
func (m *Mesh) MustRun(t *testing.T, tool string, args ...string) string {
	t.Helper()
	out, err := m.Run(t.Context(), "", tool, args...)
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", tool, strings.Join(args, " "), err, out)
	}
	return out
}

// Apply is `kubectl apply -f -` of yaml.
func (m *Mesh) Apply(t *testing.T, yaml string) {
	t.Helper()
	if out, err := m.Run(t.Context(), yaml, "kubectl", "apply", "-f", "-"); err != nil {
		t.Fatalf("kubectl apply: %v\n%s", err, out)
	}
}

// Meshctl runs bin/meshctl against the cluster and returns its standard
// output and error together, and its exit code; err is set only when it
// could not run or did not exit (a non-zero exit is a code, not an error).
func (m *Mesh) Meshctl(ctx context.Context, args ...string) (out string, code int, err error) {
	stdout, stderr, code, err := m.MeshctlSplit(ctx, args...)
	return stdout + stderr, code, err
}

// MeshctlSplit is Meshctl with standard output and error apart, for
// commands whose output is parsed (-o json) and that may also fail.
func (m *Mesh) MeshctlSplit(ctx context.Context, args ...string) (stdout, stderr string, code int, err error) {
	cmd := exec.CommandContext(ctx, filepath.Join(prereq.BinDir(), "meshctl"), append([]string{"--kubeconfig", m.Cluster.KubeconfigPath()}, args...)...)
	var o, e strings.Builder
	cmd.Stdout, cmd.Stderr = &o, &e
	err = cmd.Run()
	var ee *exec.ExitError
	if errors.As(err, &ee) && ee.Exited() {
		return o.String(), e.String(), ee.ExitCode(), nil
	}
	if err != nil {
		return o.String(), e.String(), -1, fmt.Errorf("meshctl %s: %w", strings.Join(args, " "), err)
	}
	return o.String(), e.String(), 0, nil
}

// ControllerSelector selects the controller's pods, terminating ones too.
const ControllerSelector = "app.kubernetes.io/name=mesh-controller"

// Controllers are the controller's pods that are not being deleted.
func (m *Mesh) Controllers(ctx context.Context) ([]corev1.Pod, error) {
	list, err := m.Kube.CoreV1().Pods(Namespace).List(ctx, metav1.ListOptions{LabelSelector: ControllerSelector})
	if err != nil {
		return nil, err
	}
	var out []corev1.Pod
	for _, p := range list.Items {
		if p.DeletionTimestamp == nil {
			out = append(out, p)
		}
	}
	return out, nil
}

// DumpControllers logs the last lines of every controller pod's log.
func (m *Mesh) DumpControllers(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	pods, err := m.Kube.CoreV1().Pods(Namespace).List(ctx, metav1.ListOptions{})
	if err != nil {
		return
	}
	for _, p := range pods.Items {
		out, _ := m.Run(ctx, "", "kubectl", "logs", "-n", Namespace, p.Name, "--tail", "40")
		t.Logf("pod %s/%s (%s):\n%s", Namespace, p.Name, p.Status.Phase, out)
	}
}

// WaitEnforced waits up to a minute until the AuthorizationPolicy
// ns/name's status says enforced (for example "2/2") at its current
// generation.
func (m *Mesh) WaitEnforced(t *testing.T, ns, name, enforced string) {
	t.Helper()
	ctx := t.Context()
	policies, err := policyclient.New(m.Cluster.RESTConfig())
	if err != nil {
		t.Fatal(err)
	}
	if err := meshtest.WaitFor(ctx, time.Minute, func() error {
		p, err := policies.Get(ctx, ns, name)
		if err != nil {
			return err
		}
		if p.Status.Enforced != enforced || p.Status.ObservedGeneration != p.Generation {
			return fmt.Errorf("policy %s/%s: status %+v at generation %d, want %s enforced", ns, name, p.Status, p.Generation, enforced)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

// Namespace creates namespace name, labelled for injection if inject, and
// waits for its default ServiceAccount (pods are refused until it exists).
func (m *Mesh) Namespace(t *testing.T, name string, inject bool) {
	t.Helper()
	ctx := t.Context()
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}
	if inject {
		ns.Labels = map[string]string{"mesh.dev/inject": "enabled"}
	}
	if _, err := m.Kube.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := meshtest.WaitFor(ctx, time.Minute, func() error {
		_, err := m.Kube.CoreV1().ServiceAccounts(name).Get(ctx, "default", metav1.GetOptions{})
		return err
	}); err != nil {
		t.Fatal(err)
	}
}
