package appsvid

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"math/big"
	"testing"
	"time"
)

func key(t *testing.T) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// selfSigned makes a certificate from tmpl, as a CA would.
func selfSigned(t *testing.T, tmpl *x509.Certificate) *x509.Certificate {
	t.Helper()
	k := key(t)
	tmpl.SerialNumber, tmpl.NotBefore, tmpl.NotAfter = big.NewInt(1), time.Now(), time.Now().Add(time.Hour)
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// TestValueAsX509WritesIt: the extension a CSR asks with is byte for byte
// the one x509.CreateCertificate writes for the policy, and a certificate
// with it is marked.
func TestValueAsX509WritesIt(t *testing.T) {
	c := selfSigned(t, &x509.Certificate{Policies: []x509.OID{OID}})
	var found bool
	for _, e := range c.Extensions {
		if e.Id.Equal(certificatePolicies) {
			found = true
			if string(e.Value) != string(policiesValue) {
				t.Errorf("x509 writes %x, Request asks %x", e.Value, policiesValue)
			}
		}
	}
	if !found || !Marked(c) {
		t.Errorf("the certificate has the policy extension %t, marked %t", found, Marked(c))
	}
	if Marked(selfSigned(t, &x509.Certificate{})) {
		t.Error("a certificate without the policy is marked")
	}
	other, _ := x509.ParseOID("2.25.1")
	if Marked(selfSigned(t, &x509.Certificate{Policies: []x509.OID{other}})) {
		t.Error("a certificate with another policy is marked")
	}
}

func TestRequested(t *testing.T) {
	other, _ := x509.ParseOID("2.25.1")
	otherValue := func() []byte {
		for _, e := range selfSigned(t, &x509.Certificate{Policies: []x509.OID{OID, other}}).Extensions {
			if e.Id.Equal(certificatePolicies) {
				return e.Value
			}
		}
		t.Fatal("no policies extension")
		return nil
	}()
	critical := Request()
	critical.Critical = true
	for _, tc := range []struct {
		name string
		exts []pkix.Extension
		want bool
	}{
		{"the request", []pkix.Extension{Request()}, true},
		{"none", nil, false},
		{"critical", []pkix.Extension{critical}, false},
		{"with another policy too", []pkix.Extension{{Id: certificatePolicies, Value: otherValue}}, false},
		{"another extension", []pkix.Extension{{Id: asn1.ObjectIdentifier{1, 2, 3}, Value: policiesValue}}, false},
	} {
		der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{ExtraExtensions: tc.exts}, key(t))
		if err != nil {
			t.Fatal(err)
		}
		csr, err := x509.ParseCertificateRequest(der)
		if err != nil {
			t.Fatal(err)
		}
		if got := Requested(csr); got != tc.want {
			t.Errorf("%s: Requested = %t, want %t", tc.name, got, tc.want)
		}
	}
}
