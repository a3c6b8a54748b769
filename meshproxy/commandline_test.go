package meshproxy_test

import (
	"bytes"
	"context"
	"path/filepath"
	"strings"
	"testing"

	"github.com/mesh-dev/mesh/meshproxy"
)

// TestCommandLine: help goes to stdout with exit code 0; what cannot be
// parsed is named on stderr with exit code 2; a command that fails exits
// 1. Flags are --name value, --name=value or -name; a bare --ipv6 is on.
func TestCommandLine(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "missing.yaml")
	tests := []struct {
		args           []string
		code           int
		stdout, stderr []string
		notStdout      string
	}{
		{nil, 2, nil, []string{"mesh-proxy: no command given: want init, run or standalone (mesh-proxy help lists the commands)"}, ""},
		{[]string{"bogus"}, 2, nil, []string{`mesh-proxy: unknown command "bogus": want init, run or standalone`}, ""},
		{[]string{"--identity-addr", "x"}, 2, nil, []string{`unknown command "--identity-addr"`}, ""},
		{[]string{"help"}, 0, []string{"mesh-proxy <command> [flags]", "\n  init ", "\n  run ", "\n  standalone "}, nil, ""},
		{[]string{"-h"}, 0, []string{"\n  run "}, nil, ""},
		{[]string{"--help"}, 0, []string{"\n  standalone "}, nil, ""},
		{[]string{"help", "run"}, 0, []string{"mesh-proxy run [flags]", "  --identity-addr string\n", `(default "cluster.local")`, "(default 15020)", "  --audit-log-allows\n"}, nil, ""},
		{[]string{"run", "-h"}, 0, []string{"  --workload-api-uids string\n", "  --log-level string\n", "(default 1h0m0s)"}, nil, ""},
		{[]string{"init", "--help"}, 0, []string{"  --ipv6\n", "(default auto)", "(default 1337)"}, nil, ""},
		{[]string{"standalone", "-help"}, 0, []string{"  --config string\n", `docs/proxy.md, "Standalone mode"`}, nil, ""},
		{[]string{"help", "bogus"}, 2, nil, []string{`mesh-proxy: help: unknown command "bogus"`}, ""},
		{[]string{"run", "--nope"}, 2, nil, []string{"mesh-proxy: run: flag provided but not defined: -nope (mesh-proxy run -h lists its flags)"}, ""},
		{[]string{"run", "--admin-port"}, 2, nil, []string{"run: flag needs an argument: -admin-port"}, ""},
		{[]string{"init", "--proxy-uid", "root"}, 2, nil, []string{`init: invalid value "root" for flag -proxy-uid`}, ""},
		{[]string{"run", "--idle-timeout", "5"}, 2, nil, []string{`run: invalid value "5" for flag -idle-timeout`}, ""},
		{[]string{"init", "--dry-run", "--ipv6", "on"}, 2, nil, []string{`mesh-proxy: init: unexpected argument "on": init takes flags only`}, "*nat"},
		{[]string{"init", "--dry-run", "extra", "--ipv6"}, 2, nil, []string{`init: unexpected argument "extra"`}, "*nat"},
		{[]string{"standalone"}, 2, nil, []string{"mesh-proxy: standalone: --config is required"}, ""},
		{[]string{"standalone", "--config", missing}, 1, nil, []string{"mesh-proxy: standalone: open " + missing}, ""},
		{[]string{"init", "--dry-run", "--ipv6=off"}, 1, nil, []string{`intercept: ipv6 mode "off" unknown`}, ""},
		{[]string{"init", "--dry-run"}, 0, []string{"# IPv6 (mode auto)", "-A MESH_OUTBOUND -m owner --uid-owner 1337 -j RETURN"}, nil, ""},
		{[]string{"init", "--dry-run", "--ipv6"}, 0, []string{"# IPv6 (mode on)"}, nil, ""},
		{[]string{"init", "--dry-run", "--ipv6=on", "--proxy-uid=7"}, 0, []string{"# IPv6 (mode on)", "--uid-owner 7 -j RETURN"}, nil, ""},
		{[]string{"init", "-dry-run", "-ipv6=", "-proxy-uid", "8", "--inbound-port", "16006"}, 0, []string{"# IPv6 (mode auto)", "--uid-owner 8 -j RETURN", "-j REDIRECT --to-ports 16006"}, nil, ""},
	}
	for _, tc := range tests {
		var stdout, stderr bytes.Buffer
		code := meshproxy.Main(context.Background(), tc.args, &stdout, &stderr)
		if code != tc.code {
			t.Errorf("%q: exit code %d, want %d\nstdout: %s\nstderr: %s", tc.args, code, tc.code, &stdout, &stderr)
			continue
		}
		for _, want := range tc.stdout {
			if !strings.Contains(stdout.String(), want) {
				t.Errorf("%q: stdout lacks %q:\n%s", tc.args, want, &stdout)
			}
		}
		for _, want := range tc.stderr {
			if !strings.Contains(stderr.String(), want) {
				t.Errorf("%q: stderr lacks %q:\n%s", tc.args, want, &stderr)
			}
		}
		if tc.stderr == nil && stderr.Len() > 0 {
			t.Errorf("%q: stderr: %s", tc.args, &stderr)
		}
		if tc.notStdout != "" && strings.Contains(stdout.String(), tc.notStdout) {
			t.Errorf("%q: stdout has %q:\n%s", tc.args, tc.notStdout, &stdout)
		}
	}
}
