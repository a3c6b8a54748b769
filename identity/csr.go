package identity

import (
	"crypto/x509"
	"errors"
	"fmt"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/mesh-dev/mesh/ca"
)

// ParseCSR parses a DER certificate signing request and checks its
// signature and key: ECDSA P-256 or P-384, Ed25519, or RSA of at least
// 2048 bits.
func ParseCSR(der []byte) (*x509.CertificateRequest, error) {
	switch {
	case len(der) == 0:
		return nil, errors.New("identity: no CSR")
	case len(der) > MaxCSRBytes:
		return nil, fmt.Errorf("identity: CSR of %d bytes exceeds %d", len(der), MaxCSRBytes)
	}
	csr, err := x509.ParseCertificateRequest(der)
	if err != nil {
		return nil, fmt.Errorf("identity: malformed CSR: %w", err)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, fmt.Errorf("identity: CSR signature: %w", err)
	}
	if err := ca.CheckPublicKey(csr.PublicKey); err != nil {
		return nil, fmt.Errorf("identity: CSR key: %w", err)
	}
	return csr, nil
}

// CheckCSRIdentity refuses a CSR that asks for any name other than id: it
// may ask for id as its only URI SAN, or for nothing.
func CheckCSRIdentity(csr *x509.CertificateRequest, id spiffeid.ID) error {
	if n := len(csr.DNSNames) + len(csr.IPAddresses) + len(csr.EmailAddresses); n > 0 {
		return fmt.Errorf("CSR asks for %d DNS, IP or email names; only %q may be asked for", n, id)
	}
	switch len(csr.URIs) {
	case 0:
		return nil
	case 1:
		if csr.URIs[0].String() != id.String() {
			return fmt.Errorf("CSR asks for %q, the token is for %q", csr.URIs[0], id)
		}
		return nil
	default:
		return fmt.Errorf("CSR asks for %d URIs; only %q may be asked for", len(csr.URIs), id)
	}
}
