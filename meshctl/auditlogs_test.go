package meshctl

import (
	"reflect"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/mesh-dev/mesh/inject"
)

// A proxy's container log: its own JSON log lines around audit records.
const containerLog = `{"time":"2026-11-24T15:55:09Z","level":"INFO","msg":"mesh-proxy running","type":"mesh.audit.v1x"}
{"type":"mesh.audit.v1","stream":"s","seq":1,"time":"2026-11-24T15:55:12Z","event":"decision","decision":"deny","dryRun":false,"policy":"shop/server","reason":"no ALLOW rule matched","source.identity":"spiffe://cluster.local/ns/shop/sa/client","http.method":"GET","http.path":"/admin","http.status":403,"prevHash":"x","hash":"y"}
not json at all {"type":"mesh.audit.v1"}
{"time":"2026-11-24T15:55:10Z","level":"WARN","msg":"policy","warning":"w"}
{"type":"mesh.audit.v1","stream":"s","seq":2,"time":"2026-11-24T15:55:22Z","event":"checkpoint","dryRun":false,"prevHash":"y","hash":"z"}
`

func TestCopyAudit(t *testing.T) {
	rec1 := strings.Split(containerLog, "\n")[1]
	rec2 := strings.Split(containerLog, "\n")[4]
	for _, tc := range []struct {
		name   string
		output string
		tail   int64
		want   []string // lines, in order
		absent []string
	}{
		{"jsonl keeps the records verbatim and nothing else", "jsonl", -1, []string{rec1, rec2}, []string{"mesh-proxy running", "not json", "WARN"}},
		{"tail keeps the last records, not the last lines", "jsonl", 1, []string{rec2}, []string{"/admin"}},
		{"tail 0", "jsonl", 0, nil, []string{"mesh.audit.v1"}},
		{"table", "table", -1, []string{"TIME", "shop/server", "GET /admin", "403", "no ALLOW rule matched", "checkpoint", "signed the chain up to seq 1"}, []string{"mesh-proxy running"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var out strings.Builder
			if err := copyAudit(&out, strings.NewReader(containerLog), tc.output, tc.tail, false); err != nil {
				t.Fatal(err)
			}
			got := out.String()
			at := 0
			for _, w := range tc.want {
				i := strings.Index(got[at:], w)
				if i < 0 {
					t.Fatalf("output lacks %q after offset %d:\n%s", w, at, got)
				}
				at += i + len(w)
			}
			for _, a := range tc.absent {
				if strings.Contains(got, a) {
					t.Fatalf("output has %q:\n%s", a, got)
				}
			}
			if tc.output == "jsonl" && len(tc.want) == 0 && got != "" {
				t.Fatalf("output %q, want nothing", got)
			}
		})
	}
}

func mustDuration(t *testing.T, s string) time.Duration {
	t.Helper()
	d, err := time.ParseDuration(s)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// The options audit logs reads the proxy's log with. That the API server
// serves the previous instance for Previous is Kubernetes' part; a fake
// clientset would not prove it, so this tests what meshctl asks for.
func TestProxyLogOptions(t *testing.T) {
	for _, tc := range []struct {
		follow, previous bool
		want             *corev1.PodLogOptions // nil: a usage error
	}{
		{false, false, &corev1.PodLogOptions{Container: inject.ProxyContainer}},
		{true, false, &corev1.PodLogOptions{Container: inject.ProxyContainer, Follow: true}},
		{false, true, &corev1.PodLogOptions{Container: inject.ProxyContainer, Previous: true}},
		{true, true, nil},
	} {
		got, err := proxyLogOptions(tc.follow, tc.previous)
		switch {
		case tc.want == nil && (err == nil || ExitCode(err) != 2 || !strings.Contains(err.Error(), "--previous") || !strings.Contains(err.Error(), "--follow")):
			t.Errorf("follow %v previous %v: %+v, %v; want a usage error naming both flags", tc.follow, tc.previous, got, err)
		case tc.want != nil && (err != nil || !reflect.DeepEqual(got, tc.want)):
			t.Errorf("follow %v previous %v: %+v, %v; want %+v", tc.follow, tc.previous, got, err, tc.want)
		}
	}
}

// The flags reach proxyLogOptions, and the usage error comes before any
// cluster is asked: a kubeconfig that does not exist fails only later.
func TestAuditLogsPreviousFlag(t *testing.T) {
	for _, tc := range []struct {
		args []string
		code int
		msg  string
	}{
		{[]string{"-p", "-f"}, 2, "excludes --follow"},
		{[]string{"--previous", "--follow"}, 2, "excludes --follow"},
		{[]string{"--follow=false", "-p"}, 1, "kubeconfig"},
		{[]string{"-p"}, 1, "kubeconfig"},
		{[]string{"-p=maybe"}, 2, "invalid argument"},
	} {
		cmd := New()
		var out strings.Builder
		cmd.SetOut(&out)
		cmd.SetErr(&out)
		cmd.SetArgs(append([]string{"audit", "logs", "pod/x", "--kubeconfig", "/nonexistent/kubeconfig"}, tc.args...))
		err := cmd.Execute()
		if err == nil || ExitCode(err) != tc.code || !strings.Contains(err.Error(), tc.msg) {
			t.Errorf("audit logs %s: exit %d, %v; want exit %d and %q", strings.Join(tc.args, " "), ExitCode(err), err, tc.code, tc.msg)
		}
	}
}
