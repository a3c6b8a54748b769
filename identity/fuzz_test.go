package identity_test

import (
	"crypto/rand"
	"crypto/x509"
	"net/url"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/protobuf/proto"

	"github.com/mesh-dev/mesh/identity"
	identityv1 "github.com/mesh-dev/mesh/identity/api/v1"
)

// FuzzParseCSR feeds arbitrary bytes to the CSR checks the identity service
// runs on every request: they must never panic, and anything they accept
// must be a well-signed CSR with an acceptable key.
func FuzzParseCSR(f *testing.F) {
	key := p256(f)
	id := spiffeid.RequireFromString("spiffe://cluster.local/ns/shop/sa/web")
	good, _ := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{URIs: []*url.URL{id.URL()}}, key)
	f.Add(good)
	f.Add([]byte{})
	f.Add([]byte("garbage"))
	f.Add(good[:len(good)/2])
	f.Fuzz(func(t *testing.T, der []byte) {
		csr, err := identity.ParseCSR(der)
		if err != nil {
			return
		}
		if csr.CheckSignature() != nil {
			t.Fatal("accepted a CSR with a bad signature")
		}
		if err := identity.CheckCSRIdentity(csr, id); err == nil {
			for _, u := range csr.URIs {
				if u.String() != id.String() {
					t.Fatalf("accepted a CSR asking for %q", u)
				}
			}
			if len(csr.DNSNames)+len(csr.IPAddresses)+len(csr.EmailAddresses) > 0 {
				t.Fatal("accepted a CSR with other names")
			}
		}
	})
}

// FuzzCertifyRequest decodes arbitrary wire bytes as a CertifyRequest and
// runs the service's request checks on it: they must never panic.
func FuzzCertifyRequest(f *testing.F) {
	good, _ := proto.Marshal(&identityv1.CertifyRequest{Csr: []byte("x"), Token: "t"})
	f.Add(good)
	f.Add([]byte{0x0a, 0xff, 0xff, 0xff, 0x0f})
	f.Fuzz(func(t *testing.T, b []byte) {
		var req identityv1.CertifyRequest
		if proto.Unmarshal(b, &req) != nil {
			return
		}
		if csr, err := identity.ParseCSR(req.GetCsr()); err == nil {
			_ = identity.CheckCSRIdentity(csr, spiffeid.RequireFromString("spiffe://cluster.local/ns/a/sa/b"))
		}
	})
}
