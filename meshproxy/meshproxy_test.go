package meshproxy_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/mesh-dev/mesh/meshproxy"
)

// TestRunRefusesBadFlags: every bad flag is reported, naming the flag,
// before the proxy connects anywhere (the identity address is a closed
// loopback port: a case that got that far would fail differently).
func TestRunRefusesBadFlags(t *testing.T) {
	bundle := filepath.Join(t.TempDir(), "bundle.pem")
	if err := os.WriteFile(bundle, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	base := []string{"run", "--identity-addr", "127.0.0.1:1", "--bundle", bundle, "--token-file", bundle, "--pod-namespace", "shop", "--pod-name", "backend-0"}
	tests := []struct {
		args []string
		want string
	}{
		{[]string{"--port-protocols", "8080=ftp"}, `--port-protocols: port 8080: proxy: protocol "ftp" is not one of http, grpc, opaque`},
		{[]string{"--port-protocols", "http=8080"}, `--port-protocols: "http" is not a port`},
		{[]string{"--port-protocols", "8080=http", "--opaque-ports", "8080"}, "--opaque-ports: port 8080 is declared http in --port-protocols"},
		{[]string{"--opaque-ports", "0"}, "--opaque-ports:"},
		{[]string{"--path-normalization", "CLEAN"}, `run: invalid value "CLEAN" for flag -path-normalization`},
		{[]string{"--headers-with-underscores", "keep"}, `run: invalid value "keep" for flag -headers-with-underscores`},
		{[]string{"--app-probes", `{"/app-health/web/readyz":{"httpGet":{"path":"/healthz","port":"http"}}}`, "--pod-ip", "198.18.0.10"}, "--app-probes (MESH_APP_PROBES):"},
		{[]string{"--app-probes", `{"/app-health/web/readyz":{"tcpSocket":{"port":8080}}}`, "--pod-ip", ""}, "--pod-ip (POD_IP) is needed to run the app probes"},
		{[]string{"--destinations", "198.18.0.10=spiffe://cluster.local/ns/a/sa/b"}, `--destinations: "198.18.0.10=spiffe://cluster.local/ns/a/sa/b" is not ip:port=spiffe-id`},
		{[]string{"--container-ports", "http=99999"}, "--container-ports: http=99999 is not a port"},
		{[]string{"--pod-labels", "=x"}, `--pod-labels: "=x" is not key=value`},
		{[]string{"--default-policy", "open"}, "--default-policy:"},
		{[]string{"--trust-domain", "Not A Domain"}, "--trust-domain:"},
		{[]string{"--controller-id", "x"}, "--controller-id:"},
		{[]string{"--log-level", "loud"}, `--log-level "loud": want debug, info, warn or error`},
		{[]string{"--log-format", "xml"}, `--log-format "xml": want json or text`},
		{[]string{"--policies", filepath.Join(t.TempDir(), "missing.yaml")}, "--policies:"},
		{[]string{"--workload-api-socket", "run/spiffe/socket", "--workload-api-uids", "1000"}, `--workload-api-socket: "run/spiffe/socket" is not an absolute path`},
		{[]string{"--workload-api-socket", "/run/spiffe/socket"}, "--workload-api-socket needs --workload-api-uids"},
		{[]string{"--workload-api-socket", "/run/spiffe/socket", "--workload-api-uids", " , "}, "--workload-api-socket needs --workload-api-uids"},
		{[]string{"--workload-api-uids", "1000"}, "--workload-api-uids needs --workload-api-socket"},
		{[]string{"--workload-api-socket", "/run/spiffe/socket", "--workload-api-uids", "1000,app"}, `--workload-api-uids: "app" is not a UID`},
		{[]string{"--workload-api-socket", "/run/spiffe/socket", "--workload-api-uids", "-1"}, `--workload-api-uids: "-1" is not a UID`},
		{[]string{"--workload-api-socket", "/run/spiffe/socket", "--workload-api-uids", "4294967296"}, `--workload-api-uids: "4294967296" is not a UID`},
		{[]string{"--workload-api-socket", "/run/spiffe/socket", "--workload-api-uids", fmt.Sprintf("1000,%d", os.Geteuid())}, fmt.Sprintf("--workload-api-uids: %d is the proxy's own UID, not an app's", os.Geteuid())},
	}
	for _, tc := range tests {
		var out bytes.Buffer
		err := meshproxy.Execute(context.Background(), append(append([]string(nil), base...), tc.args...), &out, &out)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: %v; want an error containing %q", tc.args, err, tc.want)
		}
	}
}

// TestInitDryRun: init --dry-run prints the plan to the command's output
// and installs nothing.
func TestInitDryRun(t *testing.T) {
	var out bytes.Buffer
	if err := meshproxy.Execute(context.Background(), []string{"init", "--dry-run", "--proxy-uid", "1337"}, &out, io.Discard); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"-A MESH_INBOUND -p tcp --dport 15006 -j RETURN", "-A MESH_OUTBOUND -m owner --uid-owner 1337 -j RETURN"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("plan lacks %q:\n%s", want, out.String())
		}
	}
}
