package proxy

import (
	"testing"

	"github.com/mesh-dev/mesh/ca"
	"github.com/mesh-dev/mesh/internal/testpki"
)

// The proxy names its bundle's roots as package ca does (meshctl compares
// them), without importing ca.
func TestFingerprintIsCAs(t *testing.T) {
	for _, td := range []string{"cluster.local", "example.org"} {
		pki := testpki.New(t, td)
		certs := append(pki.Bundle().X509Authorities(), pki.SVID(t, "spiffe://"+td+"/ns/a/sa/b").Certificates...)
		for _, c := range certs {
			if got, want := fingerprint(c), ca.Fingerprint(c); got != want || len(got) != 64 {
				t.Errorf("fingerprint(%s) = %q, want ca.Fingerprint's %q", c.Subject, got, want)
			}
		}
	}
}
