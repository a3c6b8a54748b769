// Package crdtest installs mesh's CustomResourceDefinitions, as the chart
// ships them (charts/mesh/crds), into a test's local cluster.
package crdtest

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/mesh-dev/mesh/e2e/cluster"
	"github.com/mesh-dev/mesh/e2e/prereq"
)

// Kubectl runs the pinned kubectl against c with stdin, returning its
// combined output.
func Kubectl(t testing.TB, c *cluster.Cluster, stdin string, args ...string) (string, error) {
	t.Helper()
	cmd := exec.CommandContext(t.Context(), prereq.Tool(t, "kubectl"), args...)
	cmd.Env = append(os.Environ(), "KUBECONFIG="+c.KubeconfigPath())
	cmd.Stdin = strings.NewReader(stdin)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// Install applies the chart's CRDs to c and waits until the API server
// serves AuthorizationPolicies. Applying is idempotent, so every test of a
// package sharing one cluster may call it.
func Install(t testing.TB, c *cluster.Cluster) {
	t.Helper()
	crds := filepath.Join(prereq.RepoRoot(), "charts", "mesh", "crds")
	if out, err := Kubectl(t, c, "", "apply", "--server-side", "--force-conflicts", "-f", crds); err != nil {
		t.Fatalf("crdtest: install CRDs from %s: %v\n%s", crds, err, out)
	}
	if out, err := Kubectl(t, c, "", "wait", "--for=condition=Established", "--timeout=60s", "crd/authorizationpolicies.security.mesh.dev"); err != nil {
		t.Fatalf("crdtest: CRD not established: %v\n%s", err, out)
	}
}
