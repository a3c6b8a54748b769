package ca

import (
	"crypto"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"strings"
	"time"

	"github.com/smallstep/certificates/cas/apiv1"
	"k8s.io/apimachinery/pkg/util/validation"
)

// MaxServingTTL caps the lifetime of serving certificates: they are made
// in memory and renewed by the process that holds the key, so a short
// lifetime costs nothing and bounds a leaked key.
const MaxServingTTL = 7 * 24 * time.Hour

// maxServingNames bounds a serving certificate's SANs: a webhook Service
// has a handful of names, not hundreds.
const maxServingNames = 32

// ServingRequest asks for a TLS serving certificate, such as the admission
// webhooks' (the API server verifies it with the trust bundle, set as the
// webhook configurations' caBundle).
type ServingRequest struct {
	// PublicKey of the certificate, from a key the caller keeps in memory.
	// The same key types as SVIDs (CheckPublicKey).
	PublicKey crypto.PublicKey
	// DNSNames are the host names the certificate is for
	// ("mesh-webhook.mesh-system.svc"). At least one DNS name or IP.
	DNSNames []string
	// IPs are the addresses the certificate is for (tests, where the API
	// server calls a URL on loopback).
	IPs []net.IP
	// TTL is the certificate's lifetime, at most MaxServingTTL and never
	// past the issuer's. Required.
	TTL time.Duration
}

// SignServing signs a TLS serving certificate for req's names with the
// active issuer and returns it followed by the issuer chain (root
// excluded). The certificate carries no URI SAN, so no SPIFFE peer
// accepts it as an SVID, and only the serverAuth usage, so it cannot
// authenticate a client.
func (c *CA) SignServing(req ServingRequest) ([]*x509.Certificate, error) {
	if err := checkServingRequest(req); err != nil {
		return nil, err
	}
	serial, err := newSerial()
	if err != nil {
		return nil, err
	}
	c.mu.RLock()
	signer, issuer := c.signer, c.st.issuer.cert()
	bundle := c.st.bundle
	c.mu.RUnlock()

	now := c.cfg.Now()
	notAfter := now.Add(req.TTL)
	if notAfter.After(issuer.NotAfter) {
		notAfter = issuer.NotAfter
	}
	cn := ""
	if len(req.DNSNames) > 0 {
		cn = req.DNSNames[0]
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		NotBefore:             now.Add(-c.cfg.Backdate),
		NotAfter:              notAfter,
		DNSNames:              append([]string(nil), req.DNSNames...),
		IPAddresses:           append([]net.IP(nil), req.IPs...),
		KeyUsage:              keyUsageFor(req.PublicKey),
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		PublicKey:             req.PublicKey,
	}
	tmpl.Subject.CommonName = cn
	resp, err := signer.CreateCertificate(&apiv1.CreateCertificateRequest{Template: tmpl, Lifetime: req.TTL, Backdate: c.cfg.Backdate})
	if err != nil {
		return nil, fmt.Errorf("ca: sign serving certificate for %v: %w", req.DNSNames, err)
	}
	chain := append([]*x509.Certificate{resp.Certificate}, resp.CertificateChain...)
	if err := validateServing(chain, req, bundle, issuer, now); err != nil {
		return nil, fmt.Errorf("ca: minted serving certificate for %v failed validation: %w", req.DNSNames, err)
	}
	return chain, nil
}

func checkServingRequest(req ServingRequest) error {
	switch {
	case req.PublicKey == nil:
		return errors.New("ca: serving certificate: no public key")
	case req.TTL <= 0 || req.TTL > MaxServingTTL:
		return fmt.Errorf("ca: serving certificate: lifetime %s is outside (0, %s]", req.TTL, MaxServingTTL)
	case len(req.DNSNames)+len(req.IPs) == 0:
		return errors.New("ca: serving certificate: no DNS name or IP")
	case len(req.DNSNames)+len(req.IPs) > maxServingNames:
		return fmt.Errorf("ca: serving certificate: %d names, more than %d", len(req.DNSNames)+len(req.IPs), maxServingNames)
	}
	if err := CheckPublicKey(req.PublicKey); err != nil {
		return err
	}
	for _, n := range req.DNSNames {
		// Lower-case DNS-1123 subdomains only: no wildcards, no trailing
		// dot, nothing a name constraint or a verifier could read two ways.
		if errs := validation.IsDNS1123Subdomain(n); len(errs) > 0 || strings.Contains(n, "*") {
			return fmt.Errorf("ca: serving certificate: %q is not a DNS name: %s", n, strings.Join(errs, "; "))
		}
	}
	for _, ip := range req.IPs {
		if ip.To16() == nil || ip.IsUnspecified() {
			return fmt.Errorf("ca: serving certificate: %q is not a usable IP", ip)
		}
	}
	return nil
}

// validateServing checks a minted serving certificate as ValidateSVID
// checks SVIDs: exactly the names asked for and no URI or email, not a CA,
// serverAuth only, inside its issuer's validity, verifying to the bundle
// for each of its names.
func validateServing(chain []*x509.Certificate, req ServingRequest, roots []*x509.Certificate, issuer *x509.Certificate, now time.Time) error {
	leaf := chain[0]
	switch {
	case len(leaf.URIs)+len(leaf.EmailAddresses) > 0:
		return errors.New("carries URI or email SANs")
	case len(leaf.DNSNames) != len(req.DNSNames) || len(leaf.IPAddresses) != len(req.IPs):
		return fmt.Errorf("names %v %v, want %v %v", leaf.DNSNames, leaf.IPAddresses, req.DNSNames, req.IPs)
	case leaf.IsCA || !leaf.BasicConstraintsValid:
		return errors.New("must carry basic constraints with CA false")
	case len(leaf.ExtKeyUsage) != 1 || leaf.ExtKeyUsage[0] != x509.ExtKeyUsageServerAuth:
		return errors.New("extended key usage must be exactly serverAuth")
	case leaf.SerialNumber == nil || leaf.SerialNumber.BitLen() < 64:
		return errors.New("serial number must be a positive number of at least 64 bits")
	case now.Before(leaf.NotBefore) || !now.Before(leaf.NotAfter):
		return fmt.Errorf("not valid now (%s to %s)", leaf.NotBefore.UTC().Format(time.RFC3339), leaf.NotAfter.UTC().Format(time.RFC3339))
	case leaf.NotAfter.After(issuer.NotAfter):
		return fmt.Errorf("outlives its issuer (%s > %s)", leaf.NotAfter.UTC().Format(time.RFC3339), issuer.NotAfter.UTC().Format(time.RFC3339))
	}
	pool, inter := x509.NewCertPool(), x509.NewCertPool()
	for _, r := range roots {
		pool.AddCert(r)
	}
	for _, c := range chain[1:] {
		inter.AddCert(c)
	}
	names := append([]string(nil), req.DNSNames...)
	for _, ip := range req.IPs {
		names = append(names, ip.String())
	}
	for _, n := range names {
		if _, err := leaf.Verify(x509.VerifyOptions{DNSName: n, Roots: pool, Intermediates: inter, CurrentTime: now, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err != nil {
			return fmt.Errorf("does not verify for %q: %w", n, err)
		}
	}
	return nil
}
