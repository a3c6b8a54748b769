package meshctl

import (
	"strings"
	"testing"
	"time"
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

func TestTimeLeft(t *testing.T) {
	for d, want := range map[string]string{"30s": "30s", "47h59m59.5s": "47h59m59s", "48h": "2d0h", "8759h59m43s": "364d23h"} {
		if got := timeLeft(mustDuration(t, d)); got != want {
			t.Errorf("timeLeft(%s) = %q, want %q", d, got, want)
		}
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
