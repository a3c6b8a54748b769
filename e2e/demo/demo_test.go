package demo_test

import (
	"bytes"
	"strings"
	"testing"

	"github.com/mesh-dev/mesh/e2e/demo"
	"github.com/mesh-dev/mesh/e2e/prereq"
)

// TestDemo runs `make demo` as a test, so the README's first command stays
// true.
func TestDemo(t *testing.T) {
	prereq.Root(t)
	for _, b := range []string{"mesh-controller", "mesh-proxy", "mesh-e2e-echo"} {
		prereq.Bin(t, b)
	}
	prereq.Tool(t, "kube-apiserver")
	var out bytes.Buffer
	if err := demo.Run(t.Context(), demo.Config{Dir: t.TempDir(), Out: &out}); err != nil {
		t.Fatalf("demo: %v\n%s", err, out.String())
	}
	for _, want := range []string{"peer=spiffe://cluster.local/ns/shop/sa/frontend", "mesh: denied by policy shop/backend", "audit log OK"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("demo output lacks %q:\n%s", want, out.String())
		}
	}
}
