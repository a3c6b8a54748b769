package meshctl_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/mesh-dev/mesh/meshctl"
)

const goodPolicy = `apiVersion: security.mesh.dev/v1alpha1
kind: AuthorizationPolicy
metadata:
  name: backend-from-frontend
  namespace: shop
spec:
  selector:
    matchLabels: {app: backend}
  action: ALLOW
  rules:
  - from:
    - identities: ["spiffe://cluster.local/ns/shop/sa/frontend", "spiffe://cluster.local/ns/ops/*"]
    - namespaces: ["monitoring"]
      serviceAccounts: ["prometheus"]
    to:
    - ports: [8080, "http-api"]
      methods: ["GET", "HEAD"]
      paths: ["/api/*", "/healthz"]
`

// policyDoc is a policy named name in shop whose spec is spec (indented
// two spaces).
func policyDoc(name, spec string) string {
	return "apiVersion: security.mesh.dev/v1alpha1\nkind: AuthorizationPolicy\nmetadata:\n  name: " + name + "\n  namespace: shop\nspec:\n" + spec
}

// TestPolicyLint gives `policy lint` the mistakes docs/policy.md warns
// of, one file each, and checks the line and the exit status.
func TestPolicyLint(t *testing.T) {
	for _, tc := range []struct {
		name  string
		files []string // contents; "" is a file that does not exist
		code  int
		lines []string // each must appear, with FILE replaced by the file's name
	}{
		{"valid", []string{goodPolicy}, 0, []string{"FILE0: shop/backend-from-frontend: ok"}},
		{"valid without a namespace", []string{strings.Replace(goodPolicy, "  namespace: shop\n", "", 1)}, 0, []string{"FILE0: backend-from-frontend: ok"}},
		{"wildcard in the middle of an identity", []string{policyDoc("mid", "  action: ALLOW\n  rules:\n  - from:\n    - identities: [\"spiffe://cluster.local/ns/*/sa/frontend\"]\n")}, 1,
			[]string{`FILE0: shop/mid: spec.rules[0].from[0].identities[0]: Invalid value: "spiffe://cluster.local/ns/*/sa/frontend": a wildcard is allowed only as a whole last segment (/*)`}},
		{"partial segment wildcard", []string{policyDoc("partial", "  action: ALLOW\n  rules:\n  - from:\n    - identities: [\"spiffe://cluster.local/ns/shop/sa/front*\"]\n")}, 1,
			[]string{"FILE0: shop/partial: spec.rules[0].from[0].identities[0]", "wildcard"}},
		{"lower-case method", []string{policyDoc("get", "  action: ALLOW\n  rules:\n  - to:\n    - methods: [\"get\"]\n")}, 1,
			[]string{"FILE0: shop/get: spec.rules[0].to[0].methods[0]"}},
		{"path not in normalised form", []string{policyDoc("slashes", "  action: DENY\n  rules:\n  - to:\n    - paths: [\"//admin*\"]\n")}, 1,
			[]string{"FILE0: shop/slashes: spec.rules[0].to[0].paths[0]"}},
		{"DENY without rules", []string{policyDoc("empty-deny", "  action: DENY\n")}, 1,
			[]string{"FILE0: shop/empty-deny: spec.rules: Required value"}},
		{"unknown action", []string{policyDoc("act", "  action: REJECT\n  rules:\n  - {}\n")}, 1,
			[]string{`FILE0: shop/act: spec.action: Unsupported value: "REJECT"`}},
		{"unauthenticated with identities", []string{policyDoc("plain", "  action: ALLOW\n  rules:\n  - from:\n    - namespaces: [shop]\n      unauthenticated: true\n")}, 1,
			[]string{"FILE0: shop/plain: spec.rules[0].from[0].unauthenticated"}},
		{"port out of range", []string{policyDoc("port", "  action: ALLOW\n  rules:\n  - to:\n    - ports: [70000]\n")}, 1,
			[]string{"FILE0: shop/port: spec.rules[0].to[0].ports[0]"}},
		{"two errors on one line", []string{policyDoc("two", "  action: ALLOW\n  rules:\n  - to:\n    - ports: [0]\n      methods: [FETCH]\n")}, 1,
			[]string{"FILE0: shop/two: spec.rules[0].to[0].ports[0]", "; spec.rules[0].to[0].methods[0]"}},
		{"one bad document among good ones", []string{goodPolicy + "---\n" + policyDoc("mid", "  action: ALLOW\n  rules:\n  - from:\n    - identities: [\"spiffe://cluster.local/*/x\"]\n")}, 1,
			[]string{"FILE0: shop/backend-from-frontend: ok", "FILE0: shop/mid: spec.rules[0].from[0].identities[0]"}},
		{"a good file and a bad one", []string{goodPolicy, policyDoc("get", "  action: ALLOW\n  rules:\n  - to:\n    - methods: [\"get\"]\n")}, 1,
			[]string{"FILE0: shop/backend-from-frontend: ok", "FILE1: shop/get: spec.rules[0].to[0].methods[0]"}},
		{"unknown field", []string{strings.Replace(goodPolicy, "action: ALLOW", "action: ALLOW\n  actions: [ALLOW]", 1)}, 2, []string{"FILE0: ", `unknown field "actions"`}},
		{"another kind", []string{"apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n"}, 2, []string{"FILE0: ", "not security.mesh.dev/v1alpha1 AuthorizationPolicy"}},
		{"not YAML", []string{"{{{"}, 2, []string{"FILE0: "}},
		{"empty", []string{"\n---\n"}, 2, []string{"FILE0: ", "no AuthorizationPolicy"}},
		{"missing file and a valid one", []string{"", goodPolicy}, 2, []string{"FILE0: ", "no such file", "FILE1: shop/backend-from-frontend: ok"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			args := []string{"policy", "lint"}
			for i, content := range tc.files {
				name := filepath.Join(dir, "p"+string(rune('0'+i))+".yaml")
				if content != "" {
					if err := os.WriteFile(name, []byte(content), 0o600); err != nil {
						t.Fatal(err)
					}
				}
				args = append(args, name)
			}
			out, err := run(nil, args...)
			if got := meshctl.ExitCode(err); got != tc.code {
				t.Errorf("exit %d (%v), want %d; output:\n%s", got, err, tc.code, out)
			}
			for _, l := range tc.lines {
				for i := range tc.files {
					l = strings.ReplaceAll(l, "FILE"+string(rune('0'+i)), filepath.Join(dir, "p"+string(rune('0'+i))+".yaml"))
				}
				if !strings.Contains(out, l) {
					t.Errorf("output lacks %q:\n%s", l, out)
				}
			}
		})
	}
}

func TestPolicyLintStdin(t *testing.T) {
	out, err := run([]byte(goodPolicy), "policy", "lint", "-")
	if err != nil || out != "-: shop/backend-from-frontend: ok\n" {
		t.Errorf("%q, %v", out, err)
	}
}

func TestPolicyCheckUsage(t *testing.T) {
	for _, tc := range []struct {
		args []string
		code int
		msg  string
	}{
		{[]string{"policy", "check"}, 2, "--from, --to and --port are required"},
		{[]string{"policy", "check", "--from", "pod/a", "--to", "pod/b"}, 2, "are required"},
		{[]string{"policy", "check", "--from", "a", "--to", "pod/b", "--port", "80"}, 2, "want TYPE/NAME"},
		{[]string{"policy", "check", "--from", "pod/a", "--to", "deploy/b", "--port", "80"}, 2, "take pod/NAME"},
		{[]string{"policy", "check", "--from", "pod/a", "--to", "pod/b", "--port", "80", "--method", "FETCH"}, 2, `--method "FETCH"`},
		{[]string{"policy", "check", "--from", "pod/a", "--to", "pod/b", "--port", "80", "--path", "admin"}, 2, `--path "admin"`},
		{[]string{"policy", "check", "--from", "pod/a", "--to", "pod/b", "--port", "80", "-o", "xml"}, 2, `--output "xml"`},
		{[]string{"policy", "check", "extra"}, 2, "unknown command"},
		{[]string{"policy", "check", "--from", "pod/a", "--to", "pod/b", "--port", "80", "--kubeconfig", "/nonexistent/kubeconfig"}, 1, "kubeconfig"},
		{[]string{"policy", "lint"}, 2, "requires at least 1 arg"},
		{[]string{"version", "-o", "xml"}, 2, `--output "xml"`},
		{[]string{"version", "extra"}, 2, "unknown command"},
		{[]string{"version", "--kubeconfig", "/nonexistent/kubeconfig"}, 1, "kubeconfig"},
	} {
		out, err := run(nil, tc.args...)
		if err == nil || meshctl.ExitCode(err) != tc.code || !strings.Contains(err.Error(), tc.msg) {
			t.Errorf("meshctl %s: exit %d, %v (output %q); want exit %d and %q", strings.Join(tc.args, " "), meshctl.ExitCode(err), err, out, tc.code, tc.msg)
		}
	}
}
