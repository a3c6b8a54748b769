// Package webhook serves mesh-controller's admission webhooks: sidecar
// injection (package inject) on /inject and AuthorizationPolicy
// validation (package authz/webhook) on /validate-policy.
//
// The serving certificate is issued in memory by the mesh CA for the
// webhook Service's DNS names, on a key that never leaves the process, and
// served through tls.Config.GetCertificate, so renewals (at half life, and
// whenever the CA changes) need no restart. The API server verifies it
// with the webhook configurations' caBundle, which the server keeps equal
// to the CA's trust bundle. Every replica does this, as Istio's istiod
// does: the update is idempotent (written only when the bytes differ, with
// optimistic concurrency), every replica computes the same bundle from the
// same CA Secret, and a caBundle emptied by `helm upgrade` is refilled
// within PatchInterval even while no replica leads.
package webhook

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/errgroup"
	"k8s.io/client-go/kubernetes"

	authzwebhook "github.com/mesh-dev/mesh/authz/webhook"
	"github.com/mesh-dev/mesh/ca"
	"github.com/mesh-dev/mesh/inject"
)

// Paths the webhooks are served on.
const (
	InjectPath         = "/inject"
	ValidatePolicyPath = "/validate-policy"
)

// Defaults for Config's zero values.
const (
	DefaultCertTTL       = 24 * time.Hour
	DefaultPatchInterval = time.Minute
)

// Authority is what the server needs of the mesh CA (*ca.CA).
type Authority interface {
	SignServing(ca.ServingRequest) ([]*x509.Certificate, error)
	Bundle() []*x509.Certificate
	Updated() <-chan struct{}
}

// Config configures a Server.
type Config struct {
	// CA issues the serving certificate and supplies the caBundle.
	// Required.
	CA Authority
	// DNSNames and IPs the serving certificate is for: the webhook
	// Service's names, and in tests the address the API server calls. At
	// least one.
	DNSNames []string
	IPs      []net.IP
	// CertTTL is the serving certificate's lifetime; it is renewed at half
	// of it. Zero means 24h.
	CertTTL time.Duration
	// Injector mutates pods. Required.
	Injector *inject.Injector
	// NamespaceLabels returns a namespace's labels (from an informer's
	// cache, falling back to the API). Required.
	NamespaceLabels func(ctx context.Context, namespace string) (map[string]string, error)
	// Validator serves /validate-policy. Zero means authz/webhook's
	// Handler.
	Validator http.Handler
	// Kube writes the webhook configurations' caBundle. Zero means they
	// are not kept (tests without an API server).
	Kube kubernetes.Interface
	// MutatingWebhook and ValidatingWebhook name the configurations whose
	// caBundle is kept; empty names are skipped.
	MutatingWebhook, ValidatingWebhook string
	// PatchInterval is how often the caBundles are checked (and the
	// certificate's renewal time, against the wall clock). Zero means 1m.
	PatchInterval time.Duration
	// Now is the clock. Zero means time.Now.
	Now func() time.Time
	// Logger. Zero means slog.Default().
	Logger *slog.Logger
	// Registerer for the metrics. Zero means none are registered.
	Registerer prometheus.Registerer
}

// Server serves the webhooks.
type Server struct {
	cfg     Config
	cert    atomic.Pointer[tls.Certificate]
	renewAt atomic.Int64 // unix nanoseconds
	m       *metrics
	handler http.Handler
}

// New checks cfg and issues the first serving certificate.
func New(cfg Config) (*Server, error) {
	switch {
	case cfg.CA == nil:
		return nil, errors.New("webhook: Config.CA is required")
	case cfg.Injector == nil:
		return nil, errors.New("webhook: Config.Injector is required")
	case cfg.NamespaceLabels == nil:
		return nil, errors.New("webhook: Config.NamespaceLabels is required")
	case len(cfg.DNSNames)+len(cfg.IPs) == 0:
		return nil, errors.New("webhook: Config.DNSNames or IPs is required")
	case cfg.CertTTL < 0 || cfg.CertTTL > ca.MaxServingTTL:
		return nil, fmt.Errorf("webhook: CertTTL %s is outside [0, %s]", cfg.CertTTL, ca.MaxServingTTL)
	case cfg.PatchInterval < 0:
		return nil, fmt.Errorf("webhook: PatchInterval %s is negative", cfg.PatchInterval)
	}
	if cfg.CertTTL == 0 {
		cfg.CertTTL = DefaultCertTTL
	}
	if cfg.PatchInterval == 0 {
		cfg.PatchInterval = DefaultPatchInterval
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Validator == nil {
		cfg.Validator = authzwebhook.Handler{Logger: cfg.Logger}
	}
	m, err := newMetrics(cfg.Registerer)
	if err != nil {
		return nil, err
	}
	s := &Server{cfg: cfg, m: m}
	if err := s.issue(); err != nil {
		return nil, err
	}
	mux := http.NewServeMux()
	mux.Handle(InjectPath, s.m.count("inject", injectHandler{s}))
	mux.Handle(ValidatePolicyPath, s.m.count("validate-policy", s.cfg.Validator))
	s.handler = mux
	return s, nil
}

// Handler serves both webhooks (without TLS: Run adds it).
func (s *Server) Handler() http.Handler { return s.handler }

// TLSConfig is the server's TLS: 1.3 only (the API server's client speaks
// it), with the current serving certificate fetched per handshake.
func (s *Server) TLSConfig() *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS13,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			return s.cert.Load(), nil
		},
	}
}

// issue makes a new key and has the CA sign a serving certificate for it.
func (s *Server) issue() error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return fmt.Errorf("webhook: serving key: %w", err)
	}
	chain, err := s.cfg.CA.SignServing(ca.ServingRequest{PublicKey: key.Public(), DNSNames: s.cfg.DNSNames, IPs: s.cfg.IPs, TTL: s.cfg.CertTTL})
	if err != nil {
		return fmt.Errorf("webhook: serving certificate: %w", err)
	}
	cert := &tls.Certificate{PrivateKey: key, Leaf: chain[0]}
	for _, c := range chain {
		cert.Certificate = append(cert.Certificate, c.Raw)
	}
	leaf := chain[0]
	s.cert.Store(cert)
	s.renewAt.Store(leaf.NotBefore.Add(leaf.NotAfter.Sub(leaf.NotBefore) / 2).UnixNano())
	s.m.certExpiry.Set(float64(leaf.NotAfter.Unix()))
	s.cfg.Logger.Info("webhook serving certificate issued", "names", s.cfg.DNSNames, "ips", s.cfg.IPs, "serial", leaf.SerialNumber.Text(16), "notAfter", leaf.NotAfter)
	return nil
}

// Certificate is the serving certificate in use.
func (s *Server) Certificate() *x509.Certificate { return s.cert.Load().Leaf }

// Run serves the webhooks on lis until ctx ends, renewing the certificate
// and keeping the caBundles current meanwhile.
func (s *Server) Run(ctx context.Context, lis net.Listener) error {
	srv := &http.Server{
		Handler: s.handler, TLSConfig: s.TLSConfig(),
		ReadHeaderTimeout: 10 * time.Second, ReadTimeout: 30 * time.Second, WriteTimeout: 30 * time.Second,
		IdleTimeout: 90 * time.Second, MaxHeaderBytes: 64 << 10,
		ErrorLog: slog.NewLogLogger(s.cfg.Logger.Handler(), slog.LevelDebug),
	}
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error {
		<-gctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
		return nil
	})
	g.Go(func() error {
		if err := srv.ServeTLS(lis, "", ""); !errors.Is(err, http.ErrServerClosed) {
			return fmt.Errorf("webhook: serve: %w", err)
		}
		return nil
	})
	g.Go(func() error { s.upkeep(gctx); return nil })
	return g.Wait()
}

// upkeep renews the certificate when due and whenever the CA changes
// (a new issuer or root: the old chain may soon leave the bundle), and
// keeps the caBundles equal to the CA's bundle.
func (s *Server) upkeep(ctx context.Context) {
	s.syncBundles(ctx)
	tick := time.NewTicker(s.cfg.PatchInterval)
	defer tick.Stop()
	for {
		updated := s.cfg.CA.Updated()
		select {
		case <-ctx.Done():
			return
		case <-updated:
			s.renew("the CA changed")
			s.syncBundles(ctx)
		case <-tick.C:
			// The wall clock, not a timer set at issue, decides renewal:
			// a suspended VM must not sleep through it.
			if !s.cfg.Now().Before(time.Unix(0, s.renewAt.Load())) {
				s.renew("half its life passed")
			}
			s.syncBundles(ctx)
		}
	}
}

func (s *Server) renew(why string) {
	if err := s.issue(); err != nil {
		// The current certificate stays until it expires; the next tick
		// tries again.
		s.m.renewalFailures.Inc()
		s.cfg.Logger.Error("renewing the webhook serving certificate", "reason", why, "err", err)
	}
}
