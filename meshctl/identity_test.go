package meshctl_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/mesh-dev/mesh/meshctl"
)

// The parts of identity show that need no cluster: arguments, output
// formats and exit codes. The command against a cluster is tested in
// e2e/install and e2e/demo.
func TestIdentityShowUsage(t *testing.T) {
	for _, tc := range []struct {
		args []string
		code int
		msg  string
	}{
		{[]string{"identity", "show"}, 2, "accepts 1 arg"},
		{[]string{"identity", "show", "backend"}, 2, "want TYPE/NAME"},
		{[]string{"identity", "show", "pod/"}, 2, "want TYPE/NAME"},
		{[]string{"identity", "show", "pod/a/b"}, 2, "want TYPE/NAME"},
		{[]string{"identity", "show", "svc/backend"}, 2, `type "svc" is not supported`},
		{[]string{"identity", "show", "pod/x", "-o", "xml"}, 2, `--output "xml"`},
		{[]string{"identity", "show", "pod/x", "--nope"}, 2, "unknown flag"},
		{[]string{"identity", "show", "pod/x", "--kubeconfig", "/nonexistent/kubeconfig"}, 1, "kubeconfig"},
	} {
		out, err := run(nil, tc.args...)
		if err == nil || meshctl.ExitCode(err) != tc.code || !strings.Contains(err.Error(), tc.msg) {
			t.Errorf("meshctl %s: exit %d, %v (output %q); want exit %d and %q", strings.Join(tc.args, " "), meshctl.ExitCode(err), err, out, tc.code, tc.msg)
		}
	}
	if meshctl.ExitCode(nil) != 0 || meshctl.ExitCode(errors.New("x")) != 1 {
		t.Error("ExitCode of nil or a plain error")
	}
}
