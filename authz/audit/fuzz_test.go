package audit_test

import (
	"bytes"
	"strings"
	"testing"

	"github.com/mesh-dev/mesh/authz/audit"
	"github.com/mesh-dev/mesh/internal/testpki"
)

// FuzzVerify: the verifier never panics on arbitrary input, whether it
// checks signatures or only the chain, and never accepts a signed log
// whose bytes were changed (unless only its unanchored tail was).
func FuzzVerify(f *testing.F) {
	pki := testpki.New(f, "cluster.local")
	bundle := pki.Bundle()
	var signed bytes.Buffer
	for _, l := range signedLogTB(f, pki.Source(f, backendID), "shop/backend-0@1", 3, 2) {
		signed.WriteString(l + "\n")
	}
	f.Add(signed.Bytes())
	f.Add([]byte(strings.Replace(signed.String(), `"decision":"deny"`, `"decision":"allow"`, 1)))
	f.Add([]byte(strings.Replace(signed.String(), `"checkpoint.x5c":["`, `"checkpoint.x5c":["AAAA`, 1)))
	f.Add([]byte("{}\n"))
	f.Add([]byte(`{"type":"mesh.audit.v1","stream":"s","seq":1,"event":"checkpoint","prevHash":"` + audit.Genesis + `","hash":"` + audit.Genesis + `"}` + "\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		_, _ = audit.Verify(bytes.NewReader(b), audit.VerifyOptions{ChainOnly: true})
		res, err := audit.Verify(bytes.NewReader(b), audit.VerifyOptions{Bundle: bundle, Strict: true})
		if err == nil && !bytes.Equal(lines(b), signed.Bytes()) && len(res.Streams) == 1 && res.Streams[0].Name == "shop/backend-0@1" && res.Streams[0].Records == 5 {
			// A strictly verified stream of the same name and length as
			// the signed one must be the signed one: the signatures cover
			// every record.
			t.Fatalf("a changed log verifies strictly:\n%s", b)
		}
	})
}

// lines normalises what a line scanner ignores: CRLF endings and a missing
// final newline.
func lines(b []byte) []byte {
	b = bytes.ReplaceAll(b, []byte("\r\n"), []byte("\n"))
	if len(b) > 0 && b[len(b)-1] != '\n' {
		b = append(b, '\n')
	}
	return b
}
