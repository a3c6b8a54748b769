package meshproxy

import (
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

// shipTags are the build tags of every shipped build (the Makefile's
// GO_BUILD_FLAGS).
const shipTags = "grpcnotrace"

func goTool() string {
	if p, err := exec.LookPath("go"); err == nil {
		return p
	}
	return filepath.Join(runtime.GOROOT(), "bin", "go")
}

// TestProxyLinksNoServerSide pins what keeps the proxy small: mesh-proxy,
// built as it ships, must not link the identity service, the CA,
// any k8s.io library, grpc's tracing or cobra. Each of them came in once
// through one small function (identity's ID parser, ca's fingerprint) or
// one default (grpc's golang.org/x/net/trace, without the grpcnotrace tag)
// and with it megabytes of binary and of idle RSS per proxy, from their
// package initialisation (docs/benchmarks.md, "What was tuned").
func TestProxyLinksNoServerSide(t *testing.T) {
	out, err := exec.Command(goTool(), "list", "-deps", "-tags", shipTags, "github.com/mesh-dev/mesh/cmd/mesh-proxy").CombinedOutput()
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
		"golang.org/x/net/trace",
		"html/template",
		// cobra linked text/template; flag does what mesh-proxy needs.
		"github.com/spf13/cobra",
		"github.com/spf13/pflag",
		"text/template",
		// The policy CRD's client (authz/api/v1alpha1/policyclient) is the
		// controller's; the proxy reads the types only.
		"k8s.io/client-go/rest",
		"k8s.io/client-go/tools/cache",
		// proxy/probe has its own copies of the three probe actions.
		"k8s.io/api/core/v1",
	} {
		if deps[banned] {
			t.Errorf("mesh-proxy links %s: keep it out of the proxy (see %s's importers with go list -f '{{.ImportPath}} {{.Imports}}' -deps -tags %s ./cmd/mesh-proxy)", banned, banned, shipTags)
		}
	}
	// Nothing of Kubernetes' libraries at all: apimachinery alone (with
	// klog, cbor, structured-merge-diff and sigs.k8s.io/json) was 2.5 MiB
	// of a proxy's idle RSS. authz, proxy/probe and identity/meshid have
	// their own small, agreement-tested equivalents (internal/kubename,
	// internal/intorstr, authz.Policy).
	for d := range deps {
		for _, prefix := range []string{"k8s.io/", "sigs.k8s.io/structured-merge-diff", "sigs.k8s.io/json"} {
			if strings.HasPrefix(d, prefix) {
				t.Errorf("mesh-proxy links %s: keep %s* out of the proxy (see its importers with go list -f '{{.ImportPath}} {{.Imports}}' -deps -tags %s ./cmd/mesh-proxy)", d, prefix, shipTags)
			}
		}
	}
}

// TestShippedBuildsUseTags: every build of the shipped binaries passes
// -tags grpcnotrace, without which TestProxyLinksNoServerSide's figures
// do not hold: the Makefile's build (as make would run it) and the images'
// Dockerfiles. bench's own build is checked by bench's TestBuildMeshProxy,
// on the binary it builds.
func TestShippedBuildsUseTags(t *testing.T) {
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	makeOut, err := exec.Command("make", "-C", root, "-n", "--no-print-directory", "build").CombinedOutput()
	if err != nil {
		t.Fatalf("make -n build: %v\n%s", err, makeOut)
	}
	sources := []struct {
		name string
		text func() (string, error)
	}{
		{"make -n build", func() (string, error) { return string(makeOut), nil }},
		{"cmd/mesh-proxy/Dockerfile", func() (string, error) {
			b, err := os.ReadFile(filepath.Join(root, "cmd/mesh-proxy/Dockerfile"))
			return string(b), err
		}},
		{"cmd/mesh-controller/Dockerfile", func() (string, error) {
			b, err := os.ReadFile(filepath.Join(root, "cmd/mesh-controller/Dockerfile"))
			return string(b), err
		}},
	}
	for _, src := range sources {
		text, err := src.text()
		if err != nil {
			t.Fatalf("%s: %v", src.name, err)
		}
		builds := 0
		for _, line := range strings.Split(text, "\n") {
			if !strings.Contains(line, "go build ") {
				continue
			}
			builds++
			if !strings.Contains(" "+line+" ", " -tags "+shipTags+" ") {
				t.Errorf("%s: %q does not pass -tags %s", src.name, strings.TrimSpace(line), shipTags)
			}
		}
		if builds == 0 {
			t.Errorf("%s: no go build line found", src.name)
		}
	}
}
