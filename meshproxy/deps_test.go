package meshproxy

import (
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

// TestProxyLinksNoServerSide pins what keeps the proxy small: mesh-proxy
// must not link the identity service, the CA or client-go's clientset.
// Each of them came in once through one small function (identity's ID
// parser, ca's fingerprint) and with it about 24 MB of binary and 12 MiB
// of idle RSS per proxy, from their package initialisation
// (docs/benchmarks.md, "What was tuned").
func TestProxyLinksNoServerSide(t *testing.T) {
	goTool, err := exec.LookPath("go")
	if err != nil {
		goTool = filepath.Join(runtime.GOROOT(), "bin", "go")
	}
	out, err := exec.Command(goTool, "list", "-deps", "github.com/mesh-dev/mesh/cmd/mesh-proxy").CombinedOutput()
	if err != nil {
		t.Fatalf("go list -deps: %v\n%s", err, out)
	}
	deps := map[string]bool{}
	for _, d := range strings.Fields(string(out)) {
		deps[d] = true
	}
	if !deps["github.com/mesh-dev/mesh/proxy"] {
		t.Fatalf("go list -deps of mesh-proxy lacks the proxy package: %s", out)
	}
	for _, banned := range []string{
		"github.com/mesh-dev/mesh/identity",
		"github.com/mesh-dev/mesh/ca",
		"k8s.io/client-go/kubernetes",
		"k8s.io/client-go/kubernetes/scheme",
	} {
		if deps[banned] {
			t.Errorf("mesh-proxy links %s: keep the server side out of the proxy (see %s's importers with go list -f '{{.ImportPath}} {{.Imports}}' -deps ./cmd/mesh-proxy)", banned, banned)
		}
	}
}
