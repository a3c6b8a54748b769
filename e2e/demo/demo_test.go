package demo_test

import (
	"bytes"
	"context"
	"strings"
	"testing"

	"github.com/mesh-dev/mesh/e2e/demo"
	"github.com/mesh-dev/mesh/e2e/prereq"
)

// TestDemo runs `make demo` as a test, so the README's first command stays
// true: the cluster in the background, helm install, the app, the policies
// and what the demo shows of them; then `make demo-down`.
func TestDemo(t *testing.T) {
	prereq.Root(t)
	for _, b := range []string{"mesh-cluster", "mesh-controller", "mesh-proxy", "mesh-e2e-echo", "meshctl"} {
		prereq.Bin(t, b)
	}
	for _, tool := range []string{"kube-apiserver", "kubectl", "helm", "kube-proxy", "coredns"} {
		prereq.Tool(t, tool)
	}
	dir := t.TempDir()
	t.Cleanup(func() {
		if err := demo.Down(context.Background(), dir); err != nil {
			t.Errorf("demo down: %v", err)
		}
	})
	var out bytes.Buffer
	if err := demo.Up(t.Context(), demo.Config{Dir: dir, Out: &out}); err != nil {
		t.Fatalf("demo: %v\n%s", err, out.String())
	}
	for _, want := range []string{
		"peer=spiffe://cluster.local/ns/shop/sa/frontend", // a call by Service name, over mTLS
		"debit 42",             // TCP across namespaces
		"denied by policy",     // the denial
		`"http.path":"/admin"`, // its audit record
		": OK: ",               // meshctl audit verify
		"spiffe://cluster.local/ns/shop/sa/backend", // meshctl identity show
		"Status check results are ✔",                // meshctl check
		"export KUBECONFIG=",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("demo output lacks %q:\n%s", want, out.String())
		}
	}
	if t.Failed() {
		t.Logf("demo output:\n%s", out.String())
	}
}
