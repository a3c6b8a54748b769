// Package source is the proxy's side of the identity service: an X509
// source that creates its key in memory (never written, never sent), asks
// the identity service for an SVID, and keeps it fresh.
//
// It implements go-spiffe's x509svid.Source and x509bundle.Source, so
// spiffetls/tlsconfig builds TLS configurations from it directly, and those
// configurations pick up every renewal at the next handshake.
package source

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"log/slog"
	mathrand "math/rand/v2"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"

	identityv1 "github.com/mesh-dev/mesh/identity/api/v1"
	"github.com/mesh-dev/mesh/identity/appsvid"
)

// Certifier is the identity service as the source uses it.
// identityv1.IdentityClient is one.
type Certifier interface {
	Certify(ctx context.Context, in *identityv1.CertifyRequest, opts ...grpc.CallOption) (*identityv1.CertifyResponse, error)
}

// Config configures a Source.
type Config struct {
	// Certifier is the identity service. Required.
	Certifier Certifier
	// Token returns the current projected ServiceAccount token; it is called
	// for every request, since the kubelet rotates the file. Required.
	Token func() (string, error)
	// TrustDomain the SVIDs must belong to. Required.
	TrustDomain spiffeid.TrustDomain
	// MinBackoff and MaxBackoff bound the retry delay after a failed
	// request. Zero means 1 second and 1 minute.
	MinBackoff, MaxBackoff time.Duration
	// Logger. Zero means slog.Default().
	Logger *slog.Logger
	// Now is the clock. Zero means time.Now. Timers use package time, so
	// tests run the source inside a testing/synctest bubble.
	Now func() time.Time
	// OnRenew, if set, is called after every successful renewal, for
	// metrics.
	OnRenew func(*x509svid.SVID)
	// App makes the SVIDs an application's, for the Workload API: each CSR
	// asks the CA for appsvid's mark, and an SVID without it is refused,
	// since in the app's hands it could sign its proxy's audit
	// checkpoints. Zero: the proxy's own SVIDs, unmarked.
	App bool
}

// Source holds the current SVID and trust bundle and renews them.
type Source struct {
	cfg Config

	mu      sync.RWMutex
	svid    *x509svid.SVID
	bundle  *x509bundle.Bundle
	renewed time.Time // when svid was installed
	closed  bool
	updated chan struct{} // closed and replaced on every update

	cancel context.CancelFunc
	done   chan struct{}
}

// New returns a Source once it holds its first SVID, and keeps it fresh in
// the background until Close. It retries with back-off until ctx ends.
func New(ctx context.Context, cfg Config) (*Source, error) {
	switch {
	case cfg.Certifier == nil:
		return nil, errors.New("source: Config.Certifier is required")
	case cfg.Token == nil:
		return nil, errors.New("source: Config.Token is required")
	case cfg.TrustDomain.IsZero():
		return nil, errors.New("source: Config.TrustDomain is required")
	}
	if cfg.MinBackoff == 0 {
		cfg.MinBackoff = time.Second
	}
	if cfg.MaxBackoff == 0 {
		cfg.MaxBackoff = time.Minute
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	s := &Source{cfg: cfg, updated: make(chan struct{}), done: make(chan struct{})}
	backoff := cfg.MinBackoff
	for {
		err := s.renew(ctx)
		if err == nil {
			break
		}
		cfg.Logger.Warn("no SVID yet; retrying", "err", err, "in", backoff)
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("source: no SVID before the context ended: %w", err)
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, cfg.MaxBackoff)
	}
	runCtx, cancel := context.WithCancel(context.Background())
	s.cancel = cancel
	go s.run(runCtx)
	return s, nil
}

// run renews at about half the SVID's life (±10%), retrying with
// exponential back-off, until ctx ends.
func (s *Source) run(ctx context.Context) {
	defer close(s.done)
	backoff := s.cfg.MinBackoff
	wait := s.renewIn()
	for {
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
		if err := s.renew(ctx); err != nil {
			if ctx.Err() != nil {
				return
			}
			s.mu.RLock()
			notAfter := s.svid.Certificates[0].NotAfter
			s.mu.RUnlock()
			// Keep the current SVID while it is valid; retry sooner than
			// it expires.
			wait = min(backoff, max(notAfter.Sub(s.cfg.Now())/2, s.cfg.MinBackoff))
			s.cfg.Logger.Warn("SVID renewal failed; keeping the current one", "err", err, "notAfter", notAfter, "retryIn", wait)
			backoff = min(backoff*2, s.cfg.MaxBackoff)
			continue
		}
		backoff = s.cfg.MinBackoff
		wait = s.renewIn()
	}
}

// renewIn is the time until the current SVID's renewal point: half its
// life, jittered by ±10% of that so a fleet does not renew in step.
func (s *Source) renewIn() time.Duration {
	s.mu.RLock()
	leaf, installed := s.svid.Certificates[0], s.renewed
	s.mu.RUnlock()
	// Counted from when the SVID arrived, not from NotBefore: the CA
	// backdates NotBefore (30 s) for clock skew, and with a short SVID
	// (tests, 30 s) half the backdated life is already over on arrival,
	// which made the source renew in a loop until rate-limited.
	start := leaf.NotBefore
	if installed.After(start) {
		start = installed
	}
	life := leaf.NotAfter.Sub(start)
	jitter := time.Duration((mathrand.Float64()*0.2 - 0.1) * float64(life/2))
	at := start.Add(life/2 + jitter)
	return max(at.Sub(s.cfg.Now()), 0)
}

// renew makes a new key, asks for an SVID for it, and installs the result.
func (s *Source) renew(ctx context.Context) error {
	token, err := s.cfg.Token()
	if err != nil {
		return fmt.Errorf("source: read token: %w", err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return fmt.Errorf("source: generate key: %w", err)
	}
	req := &x509.CertificateRequest{}
	if s.cfg.App {
		req.ExtraExtensions = []pkix.Extension{appsvid.Request()}
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, req, key)
	if err != nil {
		return fmt.Errorf("source: create CSR: %w", err)
	}
	rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	resp, err := s.cfg.Certifier.Certify(rctx, &identityv1.CertifyRequest{Csr: csr, Token: token})
	if err != nil {
		return fmt.Errorf("source: certify: %w", err)
	}
	svid, bundle, err := s.parse(resp, key)
	if err != nil {
		return err
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return errors.New("source: closed")
	}
	s.svid, s.bundle, s.renewed = svid, bundle, s.cfg.Now()
	close(s.updated)
	s.updated = make(chan struct{})
	s.mu.Unlock()
	s.cfg.Logger.Info("SVID renewed", "spiffeID", svid.ID.String(), "serial", svid.Certificates[0].SerialNumber.Text(16), "notAfter", svid.Certificates[0].NotAfter)
	if s.cfg.OnRenew != nil {
		s.cfg.OnRenew(svid)
	}
	return nil
}

// parse checks the response: the SVID must be for our key, in our trust
// domain, and verify against the bundle that came with it.
func (s *Source) parse(resp *identityv1.CertifyResponse, key crypto.Signer) (*x509svid.SVID, *x509bundle.Bundle, error) {
	chain, err := parseDER(resp.GetSvidChain())
	if err != nil {
		return nil, nil, fmt.Errorf("source: svid chain: %w", err)
	}
	roots, err := parseDER(resp.GetTrustBundle())
	if err != nil {
		return nil, nil, fmt.Errorf("source: trust bundle: %w", err)
	}
	bundle := x509bundle.FromX509Authorities(s.cfg.TrustDomain, roots)
	id, _, err := x509svid.Verify(chain, bundle, x509svid.WithTime(s.cfg.Now()))
	if err != nil {
		return nil, nil, fmt.Errorf("source: the identity service returned an SVID that does not verify: %w", err)
	}
	if !chain[0].PublicKey.(interface{ Equal(crypto.PublicKey) bool }).Equal(key.Public()) {
		return nil, nil, errors.New("source: the identity service returned an SVID for another key")
	}
	if s.cfg.App && !appsvid.Marked(chain[0]) {
		return nil, nil, errors.New("source: the identity service returned an app's SVID without the app mark: upgrade mesh-controller before the proxies")
	}
	return &x509svid.SVID{ID: id, Certificates: chain, PrivateKey: key}, bundle, nil
}

func parseDER(ders [][]byte) ([]*x509.Certificate, error) {
	if len(ders) == 0 {
		return nil, errors.New("empty")
	}
	out := make([]*x509.Certificate, 0, len(ders))
	for _, d := range ders {
		c, err := x509.ParseCertificate(d)
		if err != nil {
			return nil, err
		}
		out = append(out, c)
	}
	return out, nil
}

// GetX509SVID implements x509svid.Source. Once the SVID has expired (the
// identity service was unreachable for its whole second half-life) it
// fails: an expired credential is never presented.
func (s *Source) GetX509SVID() (*x509svid.SVID, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed {
		return nil, errors.New("source: closed")
	}
	if !s.cfg.Now().Before(s.svid.Certificates[0].NotAfter) {
		return nil, fmt.Errorf("source: SVID %q expired at %s and could not be renewed", s.svid.ID, s.svid.Certificates[0].NotAfter.UTC().Format(time.RFC3339))
	}
	return s.svid, nil
}

// GetX509BundleForTrustDomain implements x509bundle.Source.
func (s *Source) GetX509BundleForTrustDomain(td spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed {
		return nil, errors.New("source: closed")
	}
	if td != s.cfg.TrustDomain {
		return nil, fmt.Errorf("source: no bundle for trust domain %q", td)
	}
	return s.bundle, nil
}

// LastRenewal is when the current SVID was installed: what operators ask
// when a renewal seems stuck (meshctl identity show).
func (s *Source) LastRenewal() time.Time {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.renewed
}

// Updated returns a channel closed at the next update of the SVID or
// bundle.
func (s *Source) Updated() <-chan struct{} {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.updated
}

// Close stops renewing and waits for the renewal loop. It is idempotent;
// getters fail afterwards.
func (s *Source) Close() error {
	s.mu.Lock()
	already := s.closed
	s.closed = true
	s.mu.Unlock()
	if !already {
		s.cancel()
		<-s.done
	}
	return nil
}

// SetBundle replaces the trust bundle with roots, as pushed by the
// controller's trust-bundle stream, so that a root rotation reaches the
// proxy without waiting for its next renewal. Roots must be CA
// certificates; on error nothing changes.
func (s *Source) SetBundle(roots []*x509.Certificate) error {
	if len(roots) == 0 {
		return errors.New("source: an empty trust bundle would trust no one")
	}
	for i, r := range roots {
		if r == nil || !r.IsCA {
			return fmt.Errorf("source: trust bundle entry %d is not a CA certificate", i)
		}
	}
	bundle := x509bundle.FromX509Authorities(s.cfg.TrustDomain, roots)
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return errors.New("source: closed")
	}
	if s.bundle != nil && s.bundle.Equal(bundle) {
		s.mu.Unlock()
		return nil
	}
	s.bundle = bundle
	close(s.updated)
	s.updated = make(chan struct{})
	svid := s.svid
	s.mu.Unlock()
	if _, _, err := x509svid.Verify(svid.Certificates, bundle); err != nil {
		// Peers with this bundle will refuse the proxy's SVID until it is
		// renewed: a rotation step taken too early.
		s.cfg.Logger.Warn("the new trust bundle does not verify this proxy's own SVID", "err", err)
	}
	return nil
}
