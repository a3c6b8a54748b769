package meshcontroller_test

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/mesh-dev/mesh/meshcontroller"
)

// TestRefusesBadFlags: a bad flag is reported, naming it, before the
// controller touches the API server or opens a port. (The controller
// running for real is covered by e2e/demo, which starts it as a process.)
func TestRefusesBadFlags(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "missing-kubeconfig")
	tests := []struct {
		args []string
		want string
	}{
		{[]string{"--trust-domain", "Not A Domain", "--kubeconfig", missing}, "--trust-domain:"},
		{[]string{"--kubeconfig", missing}, "kubernetes client:"},
		{[]string{"stray"}, `unknown command "stray"`},
	}
	for _, tc := range tests {
		cmd := meshcontroller.New()
		cmd.SetArgs(tc.args)
		cmd.SetOut(&strings.Builder{})
		cmd.SetErr(&strings.Builder{})
		if err := cmd.Execute(); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: %v; want an error containing %q", tc.args, err, tc.want)
		}
	}
}
