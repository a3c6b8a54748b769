package ca

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// MinRSABits is the smallest RSA key the CA signs for.
const MinRSABits = 2048

// CheckPublicKey accepts the key types an SVID may carry: ECDSA P-256 or
// P-384, Ed25519, and RSA of at least 2048 bits.
func CheckPublicKey(pub crypto.PublicKey) error {
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		if k.Curve != elliptic.P256() && k.Curve != elliptic.P384() {
			return fmt.Errorf("ca: unsupported ECDSA curve %s (want P-256 or P-384)", k.Curve.Params().Name)
		}
	case ed25519.PublicKey:
		if len(k) != ed25519.PublicKeySize {
			return errors.New("ca: malformed Ed25519 key")
		}
	case *rsa.PublicKey:
		if k.N.BitLen() < MinRSABits {
			return fmt.Errorf("ca: RSA key of %d bits is too weak (want at least %d)", k.N.BitLen(), MinRSABits)
		}
	default:
		return fmt.Errorf("ca: unsupported public key type %T", pub)
	}
	return nil
}

func keyUsageFor(pub crypto.PublicKey) x509.KeyUsage {
	if _, ok := pub.(*rsa.PublicKey); ok {
		return x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment
	}
	return x509.KeyUsageDigitalSignature
}

// ValidateSVID checks an X509-SVID against the SPIFFE rules and mesh's own,
// at time now: exactly one URI SAN, equal to id, and no other name; not a
// CA; digitalSignature (and keyEncipherment for RSA) only; serverAuth and
// clientAuth; a serial of at least 64 bits; valid now and never past its
// issuer; and a chain that verifies to one of roots.
func ValidateSVID(svid *SVID, id spiffeid.ID, roots []*x509.Certificate, issuer *x509.Certificate, now time.Time) error {
	if len(svid.Chain) == 0 {
		return errors.New("empty chain")
	}
	leaf := svid.Chain[0]
	switch {
	case len(leaf.URIs) != 1:
		return fmt.Errorf("has %d URI SANs, want exactly 1", len(leaf.URIs))
	case leaf.URIs[0].String() != id.String():
		return fmt.Errorf("URI SAN is %q, want %q", leaf.URIs[0], id)
	case len(leaf.DNSNames)+len(leaf.IPAddresses)+len(leaf.EmailAddresses) > 0:
		return errors.New("carries DNS, IP or email SANs")
	case leaf.IsCA || !leaf.BasicConstraintsValid:
		return errors.New("must carry basic constraints with CA false")
	case leaf.KeyUsage != keyUsageFor(leaf.PublicKey):
		return fmt.Errorf("key usage is %#x, want %#x", leaf.KeyUsage, keyUsageFor(leaf.PublicKey))
	case !hasEKUs(leaf.ExtKeyUsage):
		return errors.New("extended key usage must be exactly serverAuth and clientAuth")
	case leaf.SerialNumber == nil || leaf.SerialNumber.Sign() <= 0 || leaf.SerialNumber.BitLen() < 64:
		return errors.New("serial number must be a positive number of at least 64 bits")
	case now.Before(leaf.NotBefore) || !now.Before(leaf.NotAfter):
		return fmt.Errorf("not valid now (%s to %s)", leaf.NotBefore.UTC().Format(time.RFC3339), leaf.NotAfter.UTC().Format(time.RFC3339))
	case issuer != nil && leaf.NotAfter.After(issuer.NotAfter):
		return fmt.Errorf("outlives its issuer (%s > %s)", leaf.NotAfter.UTC().Format(time.RFC3339), issuer.NotAfter.UTC().Format(time.RFC3339))
	}
	pool, inter := x509.NewCertPool(), x509.NewCertPool()
	for _, r := range roots {
		pool.AddCert(r)
	}
	for _, c := range svid.Chain[1:] {
		inter.AddCert(c)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: pool, Intermediates: inter, CurrentTime: now, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		return fmt.Errorf("chain does not verify to the trust bundle: %w", err)
	}
	return nil
}

func hasEKUs(ekus []x509.ExtKeyUsage) bool {
	if len(ekus) != 2 {
		return false
	}
	var server, client bool
	for _, e := range ekus {
		server = server || e == x509.ExtKeyUsageServerAuth
		client = client || e == x509.ExtKeyUsageClientAuth
	}
	return server && client
}

// fingerprint is a certificate's SHA-256, hex: how roots are named in logs,
// meshctl and the proxy's /identity.
func fingerprint(c *x509.Certificate) string {
	sum := sha256.Sum256(c.Raw)
	return hex.EncodeToString(sum[:])
}

// Fingerprint is the SHA-256 of a certificate, in hex.
func Fingerprint(c *x509.Certificate) string { return fingerprint(c) }
