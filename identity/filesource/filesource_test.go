package filesource_test

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/mesh-dev/mesh/identity/filesource"
	"github.com/mesh-dev/mesh/internal/testpki"
)

const id = "spiffe://example.org/ns/shop/sa/web"

var td = spiffeid.RequireTrustDomainFromString("example.org")

// set is the three files' content.
type set struct{ cert, key, bundle []byte }

func pemSet(t testing.TB, svid *x509svid.SVID, bundle *x509bundle.Bundle) set {
	t.Helper()
	cert, key, err := svid.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	b, err := bundle.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	return set{cert, key, b}
}

// paths is where a test's files are.
type paths struct{ cert, key, bundle string }

func newPaths(t *testing.T) paths {
	d := t.TempDir()
	return paths{filepath.Join(d, "svid.pem"), filepath.Join(d, "svid-key.pem"), filepath.Join(d, "bundle.pem")}
}

// write replaces each file by a rename, as a careful writer does.
func (p paths) write(t testing.TB, s set) {
	t.Helper()
	for _, f := range []struct {
		name string
		b    []byte
	}{{p.cert, s.cert}, {p.key, s.key}, {p.bundle, s.bundle}} {
		tmp := f.name + ".tmp"
		if err := os.WriteFile(tmp, f.b, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, f.name); err != nil {
			t.Fatal(err)
		}
	}
}

func (p paths) config(log *slog.Logger) filesource.Config {
	return filesource.Config{CertFile: p.cert, KeyFile: p.key, BundleFile: p.bundle, TrustDomain: td, Interval: 5 * time.Millisecond, Logger: log}
}

// logBuf is a slog destination a test can wait on.
type logBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuf) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// waitFor polls cond for up to 5 seconds.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		if cond() {
			return
		}
	}
	t.Fatalf("timed out waiting for %s", what)
}

func serial(t *testing.T, s *filesource.Source) string {
	t.Helper()
	svid, err := s.GetX509SVID()
	if err != nil {
		t.Fatal(err)
	}
	return svid.Certificates[0].SerialNumber.String()
}

// TestRotation: new files are picked up without a restart, Updated fires,
// and the bundle is served for the trust domain only.
func TestRotation(t *testing.T) {
	pki := testpki.New(t, "example.org")
	p := newPaths(t)
	first := pki.SVID(t, id)
	p.write(t, pemSet(t, first, pki.Bundle()))
	src, err := filesource.New(p.config(slog.New(slog.DiscardHandler)))
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	if got, want := serial(t, src), first.Certificates[0].SerialNumber.String(); got != want {
		t.Fatalf("serial %s, want %s", got, want)
	}
	if b, err := src.GetX509BundleForTrustDomain(td); err != nil || !b.Equal(pki.Bundle()) {
		t.Fatalf("bundle: %v", err)
	}
	if _, err := src.GetX509BundleForTrustDomain(spiffeid.RequireTrustDomainFromString("other.org")); err == nil {
		t.Fatal("a bundle for another trust domain")
	}
	for range 3 {
		updated := src.Updated()
		next := pki.SVID(t, id)
		p.write(t, pemSet(t, next, pki.Bundle()))
		select {
		case <-updated:
		case <-time.After(5 * time.Second):
			t.Fatal("no update after the files changed")
		}
		if got, want := serial(t, src), next.Certificates[0].SerialNumber.String(); got != want {
			t.Fatalf("serial %s, want %s", got, want)
		}
	}
}

// TestBadWriteKeepsCurrent: whatever lands in the files that is not a
// valid set leaves the current SVID in force and is logged; a valid set
// written afterwards is taken.
func TestBadWriteKeepsCurrent(t *testing.T) {
	pki := testpki.New(t, "example.org")
	otherCA := testpki.New(t, "example.org")
	otherTD := testpki.New(t, "other.org")
	good := func() set { return pemSet(t, pki.SVID(t, id), pki.Bundle()) }
	// Each bad set is the good one on disk with what the case changes:
	// the test writes one file at a time, and the source may read between
	// two of them, so a file the case does not change must stay as it is.
	tests := []struct {
		name string
		bad  func(s set) set
		want string
	}{
		{"truncated cert", func(s set) set { s.cert = s.cert[:len(s.cert)/2]; return s }, "svid.pem: "},
		{"empty cert", func(s set) set { s.cert = nil; return s }, "svid.pem: no PEM certificate"},
		{"truncated key", func(s set) set { s.key = s.key[:len(s.key)-30]; return s }, "svid-key.pem: no PEM block"},
		{"key of another SVID", func(s set) set { s.key = good().key; return s }, "svid.pem: "},
		{"cert from another CA", func(s set) set {
			o := pemSet(t, otherCA.SVID(t, id), pki.Bundle())
			s.cert, s.key = o.cert, o.key
			return s
		}, "does not verify with the bundle"},
		{"bundle of another CA", func(s set) set { s.bundle = pemSet(t, pki.SVID(t, id), otherCA.Bundle()).bundle; return s }, "does not verify with the bundle"},
		{"SVID of another trust domain", func(set) set {
			return pemSet(t, otherTD.SVID(t, "spiffe://other.org/ns/shop/sa/web"), x509bundle.FromX509Authorities(td, otherTD.CA.Bundle()))
		}, `is not in trust domain`},
		{"leaf in the bundle", func(s set) set { s.bundle = s.cert; return s }, "bundle.pem: certificate 1"},
		{"key in the cert file", func(s set) set { s.cert = append(s.cert, s.key...); return s }, `want CERTIFICATE`},
		{"RSA PUBLIC KEY as key", func(s set) set {
			s.key = []byte("-----BEGIN RSA PUBLIC KEY-----\nAAAA\n-----END RSA PUBLIC KEY-----\n")
			return s
		}, `want PRIVATE KEY or EC PRIVATE KEY`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := newPaths(t)
			first := good()
			p.write(t, first)
			var log logBuf
			src, err := filesource.New(p.config(slog.New(slog.NewTextHandler(&log, nil))))
			if err != nil {
				t.Fatal(err)
			}
			defer src.Close()
			before := serial(t, src)
			updated := src.Updated()
			p.write(t, tc.bad(first))
			// A case that changes two files may be refused once for the
			// set half written, then for the whole: wait for the latter.
			waitFor(t, "the refusal in the log", func() bool { return strings.Contains(log.String(), tc.want) })
			select {
			case <-updated:
				t.Fatal("Updated fired for a refused set")
			default:
			}
			if got := serial(t, src); got != before {
				t.Fatalf("serial %s after a bad write, want the current %s", got, before)
			}
			// Refused once, not at every tick (5 ms).
			n := strings.Count(log.String(), "new SVID files refused")
			time.Sleep(30 * time.Millisecond)
			if again := strings.Count(log.String(), "new SVID files refused"); again != n || n > 3 {
				t.Errorf("refusal logged %d times, then %d: want it once per set written, not at every tick", n, again)
			}
			next := pki.SVID(t, id)
			p.write(t, pemSet(t, next, pki.Bundle()))
			waitFor(t, "the next good set", func() bool { return serial(t, src) == next.Certificates[0].SerialNumber.String() })
		})
	}
}

// TestMissingFileKeepsCurrent: a file removed (a rename in progress, an
// operator's mistake) changes nothing until it is back.
func TestMissingFileKeepsCurrent(t *testing.T) {
	pki := testpki.New(t, "example.org")
	p := newPaths(t)
	p.write(t, pemSet(t, pki.SVID(t, id), pki.Bundle()))
	var log logBuf
	src, err := filesource.New(p.config(slog.New(slog.NewTextHandler(&log, nil))))
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	before := serial(t, src)
	if err := os.Remove(p.key); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the unreadable file in the log", func() bool { return strings.Contains(log.String(), "SVID files unreadable") })
	if got := serial(t, src); got != before {
		t.Fatalf("serial changed to %s with a file missing", got)
	}
	next := pki.SVID(t, id)
	p.write(t, pemSet(t, next, pki.Bundle()))
	waitFor(t, "the files back", func() bool { return serial(t, src) == next.Certificates[0].SerialNumber.String() })
}

// TestNewRefuses: a bad first set fails New, naming the file.
func TestNewRefuses(t *testing.T) {
	pki := testpki.New(t, "example.org")
	good := pemSet(t, pki.SVID(t, id), pki.Bundle())
	tests := []struct {
		name string
		cfg  func(p paths) filesource.Config
		set  set
		want string
	}{
		{"no cert file", func(p paths) filesource.Config { c := p.config(nil); c.CertFile = ""; return c }, good, "filesource: Config.CertFile is required"},
		{"no key file", func(p paths) filesource.Config { c := p.config(nil); c.KeyFile = ""; return c }, good, "filesource: Config.KeyFile is required"},
		{"no bundle file", func(p paths) filesource.Config { c := p.config(nil); c.BundleFile = ""; return c }, good, "filesource: Config.BundleFile is required"},
		{"no trust domain", func(p paths) filesource.Config { c := p.config(nil); c.TrustDomain = spiffeid.TrustDomain{}; return c }, good, "filesource: Config.TrustDomain is required"},
		{"negative interval", func(p paths) filesource.Config { c := p.config(nil); c.Interval = -1; return c }, good, "filesource: Config.Interval -1ns is negative"},
		{"missing file", func(p paths) filesource.Config { c := p.config(nil); c.KeyFile += ".missing"; return c }, good, "svid-key.pem.missing: no such file"},
		{"garbage bundle", func(p paths) filesource.Config { return p.config(nil) }, set{good.cert, good.key, []byte("hello")}, "bundle.pem: 5 bytes after certificate 0"},
		{"expired", func(p paths) filesource.Config {
			c := p.config(nil)
			c.Now = func() time.Time { return time.Now().Add(48 * time.Hour) }
			return c
		}, good, "does not verify with the bundle"},
		{"huge file", func(p paths) filesource.Config { return p.config(nil) }, set{bytes.Repeat([]byte(" "), filesource.MaxFileBytes+1), good.key, good.bundle}, "is larger than 1048576 bytes"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := newPaths(t)
			p.write(t, tc.set)
			src, err := filesource.New(tc.cfg(p))
			if err == nil {
				src.Close()
				t.Fatal("New succeeded")
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %q lacks %q", err, tc.want)
			}
		})
	}
}

// TestECKeyAndChain: a SEC 1 key (openssl's default) is read, and
// intermediates in the cert file are kept in the chain.
func TestECKeyAndChain(t *testing.T) {
	pki := testpki.New(t, "example.org")
	svid := pki.SVID(t, id)
	s := pemSet(t, svid, pki.Bundle())
	der, err := x509.MarshalECPrivateKey(svid.PrivateKey.(*ecdsa.PrivateKey))
	if err != nil {
		t.Fatal(err)
	}
	s.key = pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der})
	got, _, err := filesource.Parse(td, s.cert, s.key, s.bundle, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if len(got.Certificates) != len(svid.Certificates) {
		t.Fatalf("chain of %d certificates, want %d", len(got.Certificates), len(svid.Certificates))
	}
	if !got.PrivateKey.Public().(*ecdsa.PublicKey).Equal(svid.PrivateKey.Public()) {
		t.Fatal("another key")
	}
}

// TestExpiryAndClose: an SVID past its NotAfter is not served, and after
// Close nothing is.
func TestExpiryAndClose(t *testing.T) {
	pki := testpki.New(t, "example.org")
	p := newPaths(t)
	svid := pki.SVID(t, id)
	p.write(t, pemSet(t, svid, pki.Bundle()))
	var now sync.Mutex
	at := time.Now()
	cfg := p.config(slog.New(slog.DiscardHandler))
	cfg.Now = func() time.Time { now.Lock(); defer now.Unlock(); return at }
	src, err := filesource.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	now.Lock()
	at = svid.Certificates[0].NotAfter
	now.Unlock()
	if _, err := src.GetX509SVID(); err == nil || !strings.Contains(err.Error(), "expired at") {
		t.Fatalf("expired SVID served: %v", err)
	}
	src.Close()
	src.Close()
	if _, err := src.GetX509SVID(); err == nil {
		t.Fatal("SVID served after Close")
	}
	if _, err := src.GetX509BundleForTrustDomain(td); err == nil {
		t.Fatal("bundle served after Close")
	}
}

// FuzzParse: no input panics, and whatever is accepted is a verified
// SVID of the trust domain.
func FuzzParse(f *testing.F) {
	pki := testpki.New(f, "example.org")
	good := pemSet(f, pki.SVID(f, id), pki.Bundle())
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, _ := x509.MarshalECPrivateKey(key)
	f.Add(good.cert, good.key, good.bundle)
	f.Add(good.cert[:100], good.key, good.bundle)
	f.Add(good.cert, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der}), good.bundle)
	f.Add(good.bundle, good.key, good.cert)
	f.Add([]byte{}, []byte{}, []byte{})
	f.Add([]byte("-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n"), good.key, good.bundle)
	now := time.Now()
	f.Fuzz(func(t *testing.T, cert, key, bundle []byte) {
		svid, b, err := filesource.Parse(td, cert, key, bundle, now)
		if err != nil {
			return
		}
		if svid.ID.TrustDomain() != td {
			t.Fatalf("accepted an SVID of %s", svid.ID.TrustDomain())
		}
		if _, _, err := x509svid.Verify(svid.Certificates, b, x509svid.WithTime(now)); err != nil {
			t.Fatalf("accepted an SVID that does not verify: %v", err)
		}
	})
}
