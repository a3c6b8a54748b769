package ca

import (
	"context"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"math/big"
	"net/url"
	"sync"
	"time"

	"github.com/mesh-dev/mesh/identity/appsvid"
	"github.com/smallstep/certificates/cas/apiv1"
	"github.com/smallstep/certificates/cas/softcas"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	kmsapi "go.step.sm/crypto/kms/apiv1"
	_ "go.step.sm/crypto/kms/softkms" // the in-memory key manager softcas creates CA keys with
)

// CA signs X509-SVIDs and keeps the trust bundle.
type CA struct {
	cfg Config

	mu      sync.RWMutex
	st      *state
	version string                            // the store version st was loaded from or saved as
	signer  apiv1.CertificateAuthorityService // signs with st.issuer
	// updated is closed and replaced whenever a new state is installed.
	updated chan struct{}
}

// SVID is a signed X509-SVID with the chain a peer needs to verify it.
type SVID struct {
	ID spiffeid.ID
	// Chain is the leaf followed by the issuer chain, excluding the root.
	Chain []*x509.Certificate
}

// New loads the CA from cfg.Store, or, if the store is empty and the CA is
// not External, bootstraps a root and an issuer and saves them. When two
// processes bootstrap at once, the loser loads the winner's CA.
func New(ctx context.Context, cfg Config) (*CA, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	c := &CA{cfg: cfg, updated: make(chan struct{})}
	data, version, err := cfg.Store.Load(ctx)
	switch {
	case errors.Is(err, ErrNotFound) && cfg.External:
		return nil, fmt.Errorf("ca: the supplied CA store is empty: %w", err)
	case errors.Is(err, ErrNotFound):
		st, err := c.bootstrap()
		if err != nil {
			return nil, err
		}
		switch err := c.saveNew(ctx, st, ""); {
		case errors.Is(err, ErrConflict):
			cfg.Logger.Info("another controller created the CA first; loading it")
			return New(ctx, cfg)
		case err != nil:
			return nil, err
		}
		cfg.Logger.Info("bootstrapped CA", "trustDomain", cfg.TrustDomain.String(), "root", fingerprint(st.root.cert()), "issuerNotAfter", st.issuer.cert().NotAfter)
		return c, nil
	case err != nil:
		return nil, err
	}
	st, err := decodeState(data)
	if err != nil {
		return nil, err
	}
	if err := c.checkIssuer(st.issuer.cert()); err != nil {
		return nil, err
	}
	if err := c.install(st, version); err != nil {
		return nil, err
	}
	return c, nil
}

// checkIssuer refuses an issuer that cannot sign SVIDs of our trust domain.
func (c *CA) checkIssuer(issuer *x509.Certificate) error {
	now := c.cfg.Now()
	switch {
	case !issuer.IsCA || issuer.KeyUsage&x509.KeyUsageCertSign == 0:
		return fmt.Errorf("ca: issuer %q cannot sign certificates", issuer.Subject)
	case now.After(issuer.NotAfter):
		return fmt.Errorf("ca: issuer %q expired at %s", issuer.Subject, issuer.NotAfter.UTC().Format(time.RFC3339))
	}
	for _, dom := range issuer.ExcludedURIDomains {
		if dom == c.cfg.TrustDomain.Name() {
			return fmt.Errorf("ca: issuer %q excludes trust domain %q", issuer.Subject, dom)
		}
	}
	if p := issuer.PermittedURIDomains; len(p) > 0 {
		ok := false
		for _, dom := range p {
			ok = ok || dom == c.cfg.TrustDomain.Name()
		}
		if !ok {
			return fmt.Errorf("ca: issuer %q is constrained to %v, not trust domain %q", issuer.Subject, p, c.cfg.TrustDomain.Name())
		}
	}
	return nil
}

// install makes st the CA's state.
func (c *CA) install(st *state, version string) error {
	signer, err := softcas.New(context.Background(), apiv1.Options{
		Type:             apiv1.SoftCAS,
		CertificateChain: st.issuer.chain,
		Signer:           st.issuer.key,
	})
	if err != nil {
		return fmt.Errorf("ca: issuer: %w", err)
	}
	c.mu.Lock()
	c.st, c.version, c.signer = st, version, signer
	close(c.updated)
	c.updated = make(chan struct{})
	c.mu.Unlock()
	return nil
}

// Updated is closed when the CA's state changes (a rotation step here or,
// after Reload, one another replica or meshctl saved): the trust bundle
// may have changed.
func (c *CA) Updated() <-chan struct{} {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.updated
}

// Reload loads the state from the store if another process changed it.
// mesh-controller calls it when its watch of the CA Secret sees a change.
func (c *CA) Reload(ctx context.Context) error { return c.reload(ctx) }

// saveNew persists st and installs it.
func (c *CA) saveNew(ctx context.Context, st *state, version string) error {
	if c.cfg.External {
		return errors.New("ca: the CA was supplied by the user (existingSecret); mesh does not change it")
	}
	data, err := st.encode()
	if err != nil {
		return err
	}
	v, err := c.cfg.Store.Save(ctx, data, version)
	if err != nil {
		return err
	}
	return c.install(st, v)
}

// reload refreshes the state from the store, so that steps taken by another
// replica or by meshctl are seen.
func (c *CA) reload(ctx context.Context) error {
	data, version, err := c.cfg.Store.Load(ctx)
	if err != nil {
		return err
	}
	c.mu.RLock()
	same := version == c.version
	c.mu.RUnlock()
	if same {
		return nil
	}
	st, err := decodeState(data)
	if err != nil {
		return err
	}
	return c.install(st, version)
}

func (c *CA) bootstrap() (*state, error) {
	root, err := c.newRoot()
	if err != nil {
		return nil, err
	}
	issuer, err := c.newIssuer(root, c.cfg.Now())
	if err != nil {
		return nil, err
	}
	return &state{bundle: root.chain, root: *root, issuer: *issuer}, nil
}

// creator is a softcas that makes CA keys and certificates.
func creator() (*softcas.SoftCAS, error) {
	cas, err := softcas.New(context.Background(), apiv1.Options{Type: apiv1.SoftCAS, IsCreator: true})
	if err != nil {
		return nil, fmt.Errorf("ca: %w", err)
	}
	return cas, nil
}

func (c *CA) caTemplate(cn string, notBefore, notAfter time.Time) (*x509.Certificate, error) {
	serial, err := newSerial()
	if err != nil {
		return nil, err
	}
	return &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{Organization: []string{"mesh"}, OrganizationalUnit: []string{c.cfg.TrustDomain.Name()}, CommonName: cn},
		NotBefore:             notBefore,
		NotAfter:              notAfter,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		URIs:                  []*url.URL{c.cfg.TrustDomain.ID().URL()},
	}, nil
}

func (c *CA) newRoot() (*keyPair, error) {
	now := c.cfg.Now()
	tmpl, err := c.caTemplate(fmt.Sprintf("mesh root CA %s", now.UTC().Format("2006-01-02T15:04:05Z")), now.Add(-c.cfg.Backdate), now.Add(c.cfg.RootTTL))
	if err != nil {
		return nil, err
	}
	cas, err := creator()
	if err != nil {
		return nil, err
	}
	resp, err := cas.CreateCertificateAuthority(&apiv1.CreateCertificateAuthorityRequest{
		Name: tmpl.Subject.CommonName, Type: apiv1.RootCA, Template: tmpl, Lifetime: c.cfg.RootTTL,
		CreateKey: &kmsapi.CreateKeyRequest{SignatureAlgorithm: kmsapi.ECDSAWithSHA256},
	})
	if err != nil {
		return nil, fmt.Errorf("ca: create root: %w", err)
	}
	return &keyPair{chain: []*x509.Certificate{resp.Certificate}, key: resp.Signer}, nil
}

// newIssuer makes an intermediate signed by root, valid from notBefore for
// IssuerTTL (never past the root), name-constrained to the trust domain.
func (c *CA) newIssuer(root *keyPair, notBefore time.Time) (*keyPair, error) {
	if root.key == nil {
		return nil, errors.New("ca: cannot make an issuer: the root's key was not supplied")
	}
	notAfter := notBefore.Add(c.cfg.IssuerTTL)
	if ra := root.cert().NotAfter; notAfter.After(ra) {
		notAfter = ra
	}
	tmpl, err := c.caTemplate(fmt.Sprintf("mesh issuer CA %s", notBefore.UTC().Format("2006-01-02T15:04:05Z")), notBefore.Add(-c.cfg.Backdate), notAfter)
	if err != nil {
		return nil, err
	}
	tmpl.MaxPathLen, tmpl.MaxPathLenZero = 0, true
	tmpl.PermittedURIDomains = []string{c.cfg.TrustDomain.Name()}
	tmpl.PermittedDNSDomainsCritical = true
	cas, err := creator()
	if err != nil {
		return nil, err
	}
	resp, err := cas.CreateCertificateAuthority(&apiv1.CreateCertificateAuthorityRequest{
		Name: tmpl.Subject.CommonName, Type: apiv1.IntermediateCA, Template: tmpl, Lifetime: c.cfg.IssuerTTL,
		Parent:    &apiv1.CreateCertificateAuthorityResponse{Certificate: root.cert(), CertificateChain: root.chain[1:], Signer: root.key},
		CreateKey: &kmsapi.CreateKeyRequest{SignatureAlgorithm: kmsapi.ECDSAWithSHA256},
	})
	if err != nil {
		return nil, fmt.Errorf("ca: create issuer: %w", err)
	}
	return &keyPair{chain: []*x509.Certificate{resp.Certificate}, key: resp.Signer}, nil
}

// Bundle returns the trust bundle: every root a peer must trust now.
func (c *CA) Bundle() []*x509.Certificate {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return append([]*x509.Certificate(nil), c.st.bundle...)
}

// TrustDomain is the trust domain the CA issues in.
func (c *CA) TrustDomain() spiffeid.TrustDomain { return c.cfg.TrustDomain }

// IssuerNotAfter is when the active issuer expires.
func (c *CA) IssuerNotAfter() time.Time {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.st.issuer.cert().NotAfter
}

// SignSVID signs an X509-SVID for id with the CSR's public key. The caller
// has attested id; the CSR's own names and extensions are ignored (the
// identity service refuses CSRs asking for anything else before calling
// this). A zero ttl means the configured SVIDTTL.
func (c *CA) SignSVID(csr *x509.CertificateRequest, id spiffeid.ID, ttl time.Duration) (*SVID, error) {
	if !id.MemberOf(c.cfg.TrustDomain) {
		return nil, fmt.Errorf("ca: %q is not in trust domain %q", id, c.cfg.TrustDomain)
	}
	if ttl == 0 {
		ttl = c.cfg.SVIDTTL
	}
	if ttl < 0 || ttl > c.cfg.MaxSVIDTTL {
		return nil, fmt.Errorf("ca: requested lifetime %s is outside (0, %s]", ttl, c.cfg.MaxSVIDTTL)
	}
	if err := CheckPublicKey(csr.PublicKey); err != nil {
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
	notAfter := now.Add(ttl)
	if notAfter.After(issuer.NotAfter) {
		notAfter = issuer.NotAfter
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		NotBefore:             now.Add(-c.cfg.Backdate),
		NotAfter:              notAfter,
		URIs:                  []*url.URL{id.URL()},
		KeyUsage:              keyUsageFor(csr.PublicKey),
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
		PublicKey:             csr.PublicKey,
	}
	if appsvid.Requested(csr) {
		// The one thing copied from a CSR: a mark that only narrows what
		// the SVID is trusted for (it may not sign a proxy's audit).
		tmpl.Policies = []x509.OID{appsvid.OID}
	}
	resp, err := signer.CreateCertificate(&apiv1.CreateCertificateRequest{Template: tmpl, Lifetime: ttl, Backdate: c.cfg.Backdate})
	if err != nil {
		return nil, fmt.Errorf("ca: sign %q: %w", id, err)
	}
	svid := &SVID{ID: id, Chain: append([]*x509.Certificate{resp.Certificate}, resp.CertificateChain...)}
	if err := ValidateSVID(svid, id, bundle, issuer, now); err != nil {
		// Never hand out a credential that breaks the rules, whatever signed it.
		return nil, fmt.Errorf("ca: minted SVID for %q failed validation: %w", id, err)
	}
	return svid, nil
}

func newSerial() (*big.Int, error) {
	// 128 random bits, as SPIRE and the CA/B forum's minimum of 64 ask.
	s, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128))
	if err != nil {
		return nil, fmt.Errorf("ca: serial: %w", err)
	}
	if s.Sign() == 0 {
		s.SetInt64(1)
	}
	return s, nil
}
