package meshcontroller_test

import (
	"os"
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
	badInjector := filepath.Join(t.TempDir(), "injector.yaml")
	if err := os.WriteFile(badInjector, []byte("proxyUID: 0\ninboundMode: STRICT\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		args []string
		want string
	}{
		{[]string{"--trust-domain", "Not A Domain", "--kubeconfig", missing}, "--trust-domain:"},
		{[]string{"--kubeconfig", missing}, "kubernetes client:"},
		{[]string{"stray"}, `unknown command "stray"`},
		{[]string{"--log-level", "loud", "--kubeconfig", missing}, `--log-level "loud"`},
		{[]string{"--injector-config", badInjector, "--kubeconfig", missing}, `--injector-config ` + badInjector + `: inject: config: inboundMode: "STRICT" is not strict or permissive`},
		{[]string{"--injector-config", t.TempDir(), "--kubeconfig", missing}, "--injector-config: inject: config:"},
		{[]string{"--webhook-service", "", "--kubeconfig", missing}, "--webhook-service is required"},
		{[]string{"--kube-api-qps", "0", "--kubeconfig", missing}, "--kube-api-qps 0 and --kube-api-burst 200 must be positive"},
		{[]string{"--kube-api-burst", "0", "--kubeconfig", missing}, "--kube-api-qps 100 and --kube-api-burst 0 must be positive"},
		// "-" turns the webhooks off: the bad config is not read.
		{[]string{"--webhook-addr", "-", "--injector-config", badInjector, "--kubeconfig", missing}, "kubernetes client:"},
		// A missing config means the injector's defaults.
		{[]string{"--injector-config", missing, "--kubeconfig", missing}, "kubernetes client:"},
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
