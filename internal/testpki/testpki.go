// Package testpki makes SPIFFE PKI for tests at run time: a real mesh CA
// (package ca, in memory), SVIDs signed by it, and sources whose SVID a
// test can rotate. No key is ever checked in.
package testpki

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"log/slog"
	"sync"
	"testing"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/mesh-dev/mesh/ca"
)

// PKI is a trust domain with its own CA.
type PKI struct {
	CA *ca.CA
	TD spiffeid.TrustDomain
}

// New makes a CA for trust domain td. Two PKIs with the same trust domain
// are two different CAs: an SVID of one does not verify with the other.
func New(t testing.TB, td string) *PKI {
	t.Helper()
	domain := spiffeid.RequireTrustDomainFromString(td)
	c, err := ca.New(t.Context(), ca.Config{TrustDomain: domain, Store: &ca.MemoryStore{}, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatalf("testpki: %v", err)
	}
	return &PKI{CA: c, TD: domain}
}

// SVID signs a new SVID, with a new P-256 key, for id (a full SPIFFE ID).
func (p *PKI) SVID(t testing.TB, id string) *x509svid.SVID {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return p.SVIDWithKey(t, id, key)
}

// SVIDWithKey signs a new SVID for id with key, for a test of what happens
// with keys other than SVID's P-256: whatever the CA refuses fails the test.
func (p *PKI) SVIDWithKey(t testing.TB, id string, key crypto.Signer) *x509svid.SVID {
	t.Helper()
	return p.SVIDFor(t, id, key, &x509.CertificateRequest{})
}

// SVIDFor signs an SVID for id with key, from a CSR made of req (the CA
// takes from it only what it would from a proxy's: the app mark).
func (p *PKI) SVIDFor(t testing.TB, id string, key crypto.Signer, req *x509.CertificateRequest) *x509svid.SVID {
	t.Helper()
	der, err := x509.CreateCertificateRequest(rand.Reader, req, key)
	if err != nil {
		t.Fatal(err)
	}
	csr, err := x509.ParseCertificateRequest(der)
	if err != nil {
		t.Fatal(err)
	}
	sid := spiffeid.RequireFromString(id)
	s, err := p.CA.SignSVID(csr, sid, 0)
	if err != nil {
		t.Fatalf("testpki: sign %s: %v", id, err)
	}
	return &x509svid.SVID{ID: sid, Certificates: s.Chain, PrivateKey: key}
}

// Bundle is the PKI's trust bundle.
func (p *PKI) Bundle() *x509bundle.Bundle { return x509bundle.FromX509Authorities(p.TD, p.CA.Bundle()) }

// Source returns a source serving an SVID for id, which the test can
// rotate.
func (p *PKI) Source(t testing.TB, id string) *Source {
	t.Helper()
	return &Source{pki: p, svid: p.SVID(t, id), bundle: p.Bundle(), updated: make(chan struct{})}
}

// Source is an x509svid.Source and x509bundle.Source under the test's
// control.
type Source struct {
	pki     *PKI
	mu      sync.RWMutex
	svid    *x509svid.SVID
	bundle  *x509bundle.Bundle
	updated chan struct{}
}

// GetX509SVID implements x509svid.Source.
func (s *Source) GetX509SVID() (*x509svid.SVID, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.svid == nil {
		return nil, errors.New("testpki: no SVID")
	}
	return s.svid, nil
}

// GetX509BundleForTrustDomain implements x509bundle.Source.
func (s *Source) GetX509BundleForTrustDomain(td spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if td != s.bundle.TrustDomain() {
		return nil, errors.New("testpki: no bundle for " + td.String())
	}
	return s.bundle, nil
}

// Updated returns a channel closed at the next change.
func (s *Source) Updated() <-chan struct{} {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.updated
}

// Rotate replaces the SVID with a new one (new key, new serial) for the
// same identity and returns it.
func (s *Source) Rotate(t testing.TB) *x509svid.SVID {
	t.Helper()
	cur, _ := s.GetX509SVID()
	next := s.pki.SVID(t, cur.ID.String())
	s.Set(next)
	return next
}

// Set installs svid (nil: the source has none, as after an expiry).
func (s *Source) Set(svid *x509svid.SVID) {
	s.mu.Lock()
	s.svid = svid
	close(s.updated)
	s.updated = make(chan struct{})
	s.mu.Unlock()
}

// SetBundle installs a trust bundle.
func (s *Source) SetBundle(b *x509bundle.Bundle) {
	s.mu.Lock()
	s.bundle = b
	close(s.updated)
	s.updated = make(chan struct{})
	s.mu.Unlock()
}
