// Package filesource is an X.509 SVID and trust bundle read from PEM
// files: the identity of mesh-proxy's standalone mode, on machines with no
// identity service, where something else (an operator, cert-manager, a
// SPIRE agent's helper) writes the files.
//
// It implements go-spiffe's x509svid.Source and x509bundle.Source, like
// identity/source, so TLS configurations read the current SVID at every
// handshake. The files are read again when they change: a rotation needs
// no restart. The three files are taken as one set, and a set that does
// not parse, whose key is not the certificate's, or whose SVID does not
// verify with its bundle (a write in progress, or files from two
// different rotations) is logged and leaves the previous set in force.
package filesource

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// MaxFileBytes bounds what is read of each file: a certificate chain or
// bundle of a few dozen certificates is far below it.
const MaxFileBytes = 1 << 20

// Config configures a Source.
type Config struct {
	// CertFile holds the SVID's certificate chain in PEM, leaf first,
	// then any intermediates. Required.
	CertFile string
	// KeyFile holds the SVID's private key in PEM: PKCS#8 ("PRIVATE KEY")
	// or SEC 1 ("EC PRIVATE KEY"). Required.
	KeyFile string
	// BundleFile holds the trust domain's root certificates in PEM.
	// Required.
	BundleFile string
	// TrustDomain the SVID and bundle are for. Required.
	TrustDomain spiffeid.TrustDomain
	// Interval is how often the files are checked for changes. Polling,
	// not inotify: it sees every way a file can be replaced (an editor's
	// rename, the kubelet's symlink swap, a network file system), and
	// reading three small files a second costs nothing. Zero means one
	// second.
	Interval time.Duration
	// Logger. Zero means slog.Default().
	Logger *slog.Logger
	// Now is the clock SVIDs are verified with. Zero means time.Now.
	Now func() time.Time
}

// Source holds the current SVID and bundle from the files.
type Source struct {
	cfg Config

	mu      sync.RWMutex
	svid    *x509svid.SVID
	bundle  *x509bundle.Bundle
	loaded  time.Time // when svid was loaded
	closed  bool
	updated chan struct{} // closed and replaced at every change

	// seen is the files' content last tried, good or bad, so a bad set is
	// logged once, not every Interval. Only the poll loop uses it.
	seen []byte

	cancel context.CancelFunc
	done   chan struct{}
}

// New reads the files, failing if they do not hold a valid set, and
// watches them until Close.
func New(cfg Config) (*Source, error) {
	switch {
	case cfg.CertFile == "":
		return nil, errors.New("filesource: Config.CertFile is required")
	case cfg.KeyFile == "":
		return nil, errors.New("filesource: Config.KeyFile is required")
	case cfg.BundleFile == "":
		return nil, errors.New("filesource: Config.BundleFile is required")
	case cfg.TrustDomain.IsZero():
		return nil, errors.New("filesource: Config.TrustDomain is required")
	case cfg.Interval < 0:
		return nil, fmt.Errorf("filesource: Config.Interval %s is negative", cfg.Interval)
	}
	if cfg.Interval == 0 {
		cfg.Interval = time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	s := &Source{cfg: cfg, updated: make(chan struct{}), done: make(chan struct{})}
	raw, err := s.read()
	if err != nil {
		return nil, err
	}
	svid, bundle, err := s.parse(raw)
	if err != nil {
		return nil, err
	}
	s.svid, s.bundle, s.seen, s.loaded = svid, bundle, raw.joined(), cfg.Now()
	ctx, cancel := context.WithCancel(context.Background())
	s.cancel = cancel
	go s.run(ctx)
	return s, nil
}

// files is the three files' content.
type files struct{ cert, key, bundle []byte }

// joined is the set's content as one value, to tell whether anything
// changed.
func (f files) joined() []byte {
	return bytes.Join([][]byte{f.cert, f.key, f.bundle}, []byte{0})
}

func (s *Source) read() (files, error) {
	var f files
	var err error
	if f.cert, err = readFile(s.cfg.CertFile); err != nil {
		return f, err
	}
	if f.key, err = readFile(s.cfg.KeyFile); err != nil {
		return f, err
	}
	f.bundle, err = readFile(s.cfg.BundleFile)
	return f, err
}

func readFile(name string) ([]byte, error) {
	fh, err := os.Open(name)
	if err != nil {
		return nil, fmt.Errorf("filesource: %w", err)
	}
	defer fh.Close()
	b, err := io.ReadAll(io.LimitReader(fh, MaxFileBytes+1))
	if err != nil {
		return nil, fmt.Errorf("filesource: read %s: %w", name, err)
	}
	if len(b) > MaxFileBytes {
		return nil, fmt.Errorf("filesource: %s is larger than %d bytes", name, MaxFileBytes)
	}
	return b, nil
}

// parse checks a set and names the file at fault.
func (s *Source) parse(f files) (*x509svid.SVID, *x509bundle.Bundle, error) {
	svid, bundle, err := Parse(s.cfg.TrustDomain, f.cert, f.key, f.bundle, s.cfg.Now())
	if err != nil {
		var fe *FileError
		if errors.As(err, &fe) {
			name := map[string]string{"cert": s.cfg.CertFile, "key": s.cfg.KeyFile, "bundle": s.cfg.BundleFile}[fe.File]
			return nil, nil, fmt.Errorf("filesource: %s: %w", name, fe.Err)
		}
		return nil, nil, err
	}
	return svid, bundle, nil
}

// FileError is a fault of one file of the set: File is "cert", "key" or
// "bundle".
type FileError struct {
	File string
	Err  error
}

func (e *FileError) Error() string { return "filesource: " + e.File + ": " + e.Err.Error() }
func (e *FileError) Unwrap() error { return e.Err }

// Parse checks a set's PEM content: a certificate chain that is an SVID
// of trust domain td, its private key, and a bundle of CA certificates
// that verifies the chain at now. Errors of one file are *FileError.
func Parse(td spiffeid.TrustDomain, cert, key, bundle []byte, now time.Time) (*x509svid.SVID, *x509bundle.Bundle, error) {
	roots, err := parseCerts(bundle)
	if err != nil {
		return nil, nil, &FileError{"bundle", err}
	}
	for i, r := range roots {
		if !r.IsCA {
			return nil, nil, &FileError{"bundle", fmt.Errorf("certificate %d (%s) is not a CA certificate", i+1, r.Subject)}
		}
	}
	if _, err := parseCerts(cert); err != nil {
		return nil, nil, &FileError{"cert", err}
	}
	pkcs8, err := toPKCS8(key)
	if err != nil {
		return nil, nil, &FileError{"key", err}
	}
	svid, err := x509svid.Parse(cert, pkcs8)
	if err != nil {
		// Parse's errors are about the leaf or the key's match with it.
		return nil, nil, &FileError{"cert", err}
	}
	if svid.ID.TrustDomain() != td {
		return nil, nil, &FileError{"cert", fmt.Errorf("SVID %q is not in trust domain %q", svid.ID, td)}
	}
	b := x509bundle.FromX509Authorities(td, roots)
	if _, _, err := x509svid.Verify(svid.Certificates, b, x509svid.WithTime(now)); err != nil {
		return nil, nil, fmt.Errorf("filesource: the SVID does not verify with the bundle (files from two different rotations, or expired): %w", err)
	}
	return svid, b, nil
}

// parseCerts reads PEM CERTIFICATE blocks: at least one, nothing else
// but whitespace around them.
func parseCerts(b []byte) ([]*x509.Certificate, error) {
	var out []*x509.Certificate
	rest := b
	for {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			break
		}
		if block.Type != "CERTIFICATE" {
			return nil, fmt.Errorf("PEM block %d is %q, want CERTIFICATE", len(out)+1, block.Type)
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("certificate %d: %w", len(out)+1, err)
		}
		out = append(out, c)
	}
	if len(bytes.TrimSpace(rest)) != 0 {
		// A truncated file (a write in progress) ends in a partial block.
		return nil, fmt.Errorf("%d bytes after certificate %d are not a PEM block (truncated?)", len(rest), len(out))
	}
	if len(out) == 0 {
		return nil, errors.New("no PEM certificate")
	}
	return out, nil
}

// toPKCS8 returns the key as one PKCS#8 PEM block, which is what
// x509svid.Parse reads.
func toPKCS8(b []byte) ([]byte, error) {
	block, rest := pem.Decode(b)
	if block == nil {
		return nil, errors.New("no PEM block (truncated?)")
	}
	if len(bytes.TrimSpace(rest)) != 0 {
		return nil, errors.New("more than one PEM block")
	}
	switch block.Type {
	case "PRIVATE KEY":
		if _, err := x509.ParsePKCS8PrivateKey(block.Bytes); err != nil {
			return nil, err
		}
		return b, nil
	case "EC PRIVATE KEY":
		k, err := x509.ParseECPrivateKey(block.Bytes)
		if err != nil {
			return nil, err
		}
		der, err := x509.MarshalPKCS8PrivateKey(k)
		if err != nil {
			return nil, err
		}
		return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
	}
	return nil, fmt.Errorf("PEM block is %q, want PRIVATE KEY or EC PRIVATE KEY", block.Type)
}

// run checks the files every Interval until ctx ends.
func (s *Source) run(ctx context.Context) {
	defer close(s.done)
	t := time.NewTicker(s.cfg.Interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		s.check()
	}
}

// check reads the files and installs them if they changed and are valid.
func (s *Source) check() {
	raw, err := s.read()
	if err != nil {
		// A file briefly missing (a rename in progress) is retried at the
		// next tick; it is logged once.
		if s.seen != nil {
			s.cfg.Logger.Warn("SVID files unreadable; keeping the current SVID", "err", err)
			s.seen = nil
		}
		return
	}
	joined := raw.joined()
	if bytes.Equal(joined, s.seen) {
		return
	}
	s.seen = joined
	svid, bundle, err := s.parse(raw)
	if err != nil {
		s.cfg.Logger.Warn("new SVID files refused; keeping the current SVID", "err", err)
		return
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return
	}
	s.svid, s.bundle, s.loaded = svid, bundle, s.cfg.Now()
	close(s.updated)
	s.updated = make(chan struct{})
	s.mu.Unlock()
	leaf := svid.Certificates[0]
	s.cfg.Logger.Info("SVID loaded from files", "spiffeID", svid.ID.String(), "serial", leaf.SerialNumber.Text(16), "notAfter", leaf.NotAfter)
}

// GetX509SVID implements x509svid.Source. Once the SVID has expired it
// fails: an expired credential is never presented.
func (s *Source) GetX509SVID() (*x509svid.SVID, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed {
		return nil, errors.New("filesource: closed")
	}
	if leaf := s.svid.Certificates[0]; !s.cfg.Now().Before(leaf.NotAfter) {
		return nil, fmt.Errorf("filesource: SVID %q from %s expired at %s", s.svid.ID, s.cfg.CertFile, leaf.NotAfter.UTC().Format(time.RFC3339))
	}
	return s.svid, nil
}

// GetX509BundleForTrustDomain implements x509bundle.Source.
func (s *Source) GetX509BundleForTrustDomain(td spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed {
		return nil, errors.New("filesource: closed")
	}
	if td != s.cfg.TrustDomain {
		return nil, fmt.Errorf("filesource: no bundle for trust domain %q", td)
	}
	return s.bundle, nil
}

// LastRenewal is when the current SVID was loaded from the files.
func (s *Source) LastRenewal() time.Time {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.loaded
}

// Updated returns a channel closed at the next change of the SVID or
// bundle.
func (s *Source) Updated() <-chan struct{} {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.updated
}

// Close stops watching the files and waits for the watch to end. It is
// idempotent; getters fail afterwards.
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
