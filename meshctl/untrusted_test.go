package meshctl

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"
	"unicode"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/client-go/rest"
	k8stesting "k8s.io/client-go/testing"
)

// terminalSafe reports the first rune of out a terminal would act on: a
// control character other than newline and tab (an escape sequence starts
// with one).
func terminalSafe(out string) (rune, bool) {
	for _, r := range out {
		if r != '\n' && r != '\t' && (unicode.IsControl(r) || !unicode.IsPrint(r) && r != ' ') {
			return r, false
		}
	}
	return 0, true
}

// FuzzProxyAnswers: whatever a pod's admin port answers, as a body or in
// the API server's error, meshctl neither panics nor prints a control
// character or escape sequence in identity show's and policy show's
// tables, nor in what check prints of them.
func FuzzProxyAnswers(f *testing.F) {
	for _, seed := range []string{
		`{"spiffeID":"spiffe://cluster.local/ns/shop/sa/web","ready":true,"bundleRoots":["aa"]}`,
		`{"spiffeID":"spiffe://x/\u001b[31mred","issuer":"CN=\u001b]0;pwned\u0007","keyType":"\u009b2J"}`,
		`{"source":"controller","version":"v\r\n1","defaultMode":"deny","policies":[{"namespace":"a\u202eb","name":"\u0000"}],"warnings":["\u001b[2J"]}`,
		"{\"spiffeID\":\"\xff\xfe\",\"source\":\"\xc3\"}",
		`{"spiffeID":"` + strings.Repeat("a", 5000) + `"}`,
		`not json`,
	} {
		f.Add([]byte(seed), false)
		f.Add([]byte(seed), true)
	}
	f.Fuzz(func(t *testing.T, body []byte, asError bool) {
		cs := fake.NewClientset()
		cs.PrependProxyReactor("pods", func(k8stesting.Action) (bool, rest.ResponseWrapper, error) {
			if asError {
				return true, proxyAnswer{err: errors.New(string(body))}, nil
			}
			return true, proxyAnswer{body: body}, nil
		})
		pod := meshedPod("web-0", corev1.PodRunning)
		id := readIdentity(context.Background(), cs, pod, checkNow)
		pp := readProxyPolicy(context.Background(), cs, pod)
		var out bytes.Buffer
		if err := printIdentities(&out, "table", []PodIdentity{id}); err != nil {
			t.Fatal(err)
		}
		res := PodPolicy{Namespace: pod.Namespace, Pod: pod.Name, Proxy: pp.info, Error: pp.err}
		if pp.info != nil {
			res.Difference = policyDiff(pp.info, nil)
		}
		if err := printPodPolicies(&out, "table", []PodPolicy{res}); err != nil {
			t.Fatal(err)
		}
		out.WriteString(proxiesFailed(1, "lagging", []string{res.Difference}, []string{res.Error, id.Error}).Error())
		if r, ok := terminalSafe(out.String()); !ok {
			t.Fatalf("printed %U from a proxy's answer %q:\n%q", r, body, out.String())
		}
	})
}

func TestUntrusted(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"spiffe://cluster.local/ns/shop/sa/web", "spiffe://cluster.local/ns/shop/sa/web"},
		{"a\x1b[31mb", "a\uFFFD[31mb"},
		{"\u009b2J", "\uFFFD2J"},
		{"x\r\ny\tz", "x\uFFFD\uFFFDy\uFFFDz"},
		{"\xff", "\uFFFD"},
		{"a\u202eb", "a\uFFFDb"}, // right-to-left override
		{strings.Repeat("a", maxProxyText+1), strings.Repeat("a", maxProxyText) + "…"},
	} {
		if got := untrusted(tc.in); got != tc.want {
			t.Errorf("untrusted(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

// FuzzAuditRow: whatever audit line a pod's log holds, audit logs' table
// row has its nine cells and nothing a terminal acts on.
func FuzzAuditRow(f *testing.F) {
	for _, seed := range []string{
		`{"type":"mesh.audit.v1","time":"2026-11-24T12:00:00Z","decision":"deny","policy":"shop/web","http.method":"GET","http.path":"/admin","reason":"no ALLOW rule matched"}`,
		`{"type":"mesh.audit.v1","http.path":"/\u009b2J\u001b[31m","reason":"\t\n","source.identity":"\u202e"}`,
		`{"type":"mesh.audit.v1","event":"checkpoint","seq":0}`,
		`{"type":"mesh.audit.v1","time":"x"}`,
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, line []byte) {
		row := auditRow(line)
		if r, ok := terminalSafe(row); !ok {
			t.Fatalf("row has %U from %q: %q", r, line, row)
		}
		if !strings.HasPrefix(row, "(unreadable record: ") && strings.Count(row, "\t") != 8 {
			t.Fatalf("row of %d cells from %q: %q", strings.Count(row, "\t")+1, line, row)
		}
	})
}
