package identity

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"fmt"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// SelfSource gives the process that holds the CA an SVID of its own,
// signed in-process, so the identity service can serve TLS with it. Its key
// is made in memory and renewed with the SVID at half its life. It is a
// go-spiffe x509svid.Source and x509bundle.Source.
type SelfSource struct {
	ca  Signer
	id  spiffeid.ID
	now func() time.Time

	mu   sync.Mutex
	svid *x509svid.SVID
}

// NewSelfSource returns a source of SVIDs for id, signed by ca.
func NewSelfSource(ca Signer, id spiffeid.ID) (*SelfSource, error) {
	s := &SelfSource{ca: ca, id: id, now: time.Now}
	if _, err := s.GetX509SVID(); err != nil {
		return nil, err
	}
	return s, nil
}

// GetX509SVID implements x509svid.Source.
func (s *SelfSource) GetX509SVID() (*x509svid.SVID, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.svid != nil {
		leaf := s.svid.Certificates[0]
		half := leaf.NotBefore.Add(leaf.NotAfter.Sub(leaf.NotBefore) / 2)
		if s.now().Before(half) {
			return s.svid, nil
		}
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("identity: generate key: %w", err)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	if err != nil {
		return nil, fmt.Errorf("identity: csr: %w", err)
	}
	csr, err := x509.ParseCertificateRequest(der)
	if err != nil {
		return nil, fmt.Errorf("identity: csr: %w", err)
	}
	signed, err := s.ca.SignSVID(csr, s.id, 0)
	if err != nil {
		if s.svid != nil && s.now().Before(s.svid.Certificates[0].NotAfter) {
			// Keep serving the current SVID; the next handshake retries.
			return s.svid, nil
		}
		return nil, fmt.Errorf("identity: sign own SVID: %w", err)
	}
	s.svid = &x509svid.SVID{ID: s.id, Certificates: signed.Chain, PrivateKey: key}
	return s.svid, nil
}

// GetX509BundleForTrustDomain implements x509bundle.Source.
func (s *SelfSource) GetX509BundleForTrustDomain(td spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	if td != s.ca.TrustDomain() {
		return nil, fmt.Errorf("identity: no bundle for trust domain %q", td)
	}
	return x509bundle.FromX509Authorities(td, s.ca.Bundle()), nil
}
