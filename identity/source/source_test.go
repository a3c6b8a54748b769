package source_test

import (
	"context"
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"log/slog"
	"net"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/mesh-dev/mesh/ca"
	identityv1 "github.com/mesh-dev/mesh/identity/api/v1"
	"github.com/mesh-dev/mesh/identity/appsvid"
	"github.com/mesh-dev/mesh/identity/source"
)

var (
	td    = spiffeid.RequireTrustDomainFromString("cluster.local")
	webID = spiffeid.RequireFromString("spiffe://cluster.local/ns/shop/sa/web")
	quiet = slog.New(slog.DiscardHandler)
)

// certifier signs with a real CA for a fixed identity; down simulates an
// unreachable identity service. (The real service, with TokenReview, is
// tested in package identity.)
type certifier struct {
	ca    *ca.CA
	id    spiffeid.ID
	down  atomic.Bool
	calls atomic.Int64
}

func (c *certifier) Certify(_ context.Context, req *identityv1.CertifyRequest, _ ...grpc.CallOption) (*identityv1.CertifyResponse, error) {
	c.calls.Add(1)
	if c.down.Load() {
		return nil, status.Error(codes.Unavailable, "identity service down")
	}
	csr, err := x509.ParseCertificateRequest(req.Csr)
	if err != nil {
		return nil, err
	}
	return c.sign(csr)
}

// sign answers csr as the identity service does.
func (c *certifier) sign(csr *x509.CertificateRequest) (*identityv1.CertifyResponse, error) {
	svid, err := c.ca.SignSVID(csr, c.id, 0)
	if err != nil {
		return nil, err
	}
	resp := &identityv1.CertifyResponse{SpiffeId: c.id.String()}
	for _, x := range svid.Chain {
		resp.SvidChain = append(resp.SvidChain, x.Raw)
	}
	for _, x := range c.ca.Bundle() {
		resp.TrustBundle = append(resp.TrustBundle, x.Raw)
	}
	return resp, nil
}

func newCertifier(t *testing.T, id spiffeid.ID) *certifier {
	t.Helper()
	authority, err := ca.New(t.Context(), ca.Config{TrustDomain: td, Store: &ca.MemoryStore{}, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	return &certifier{ca: authority, id: id}
}

func newSource(t *testing.T, c *certifier) *source.Source {
	t.Helper()
	s, err := source.New(t.Context(), source.Config{
		Certifier: c, TrustDomain: td, Logger: quiet,
		Token: func() (string, error) { return "token", nil },
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func serial(t *testing.T, s *source.Source) string {
	t.Helper()
	svid, err := s.GetX509SVID()
	if err != nil {
		t.Fatal(err)
	}
	return svid.Certificates[0].SerialNumber.String()
}

// TestRenewsAtHalfLife: with a 1h SVID the source renews between 27 and 33
// minutes (half life ±10%), with a new key, on a fake clock.
func TestRenewsAtHalfLife(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c := newCertifier(t, webID)
		s := newSource(t, c)
		first, _ := s.GetX509SVID()
		start := time.Now()
		for i := range 3 {
			<-s.Updated()
			took := time.Since(start)
			// Half of the 1h left when the SVID arrived (NotBefore's
			// 30s backdate does not count) ±10%: 30m ± 3m. A
			// certificate's NotAfter has whole seconds, so after the
			// first renewal (which lands mid-second) the life left is
			// up to 1s short of 1h: the lower bound gives that second.
			if took < 27*time.Minute-time.Second || took > 33*time.Minute {
				t.Fatalf("renewal %d after %s, want 27m-1s..33m", i, took)
			}
			start = time.Now()
		}
		now, _ := s.GetX509SVID()
		if now.Certificates[0].SerialNumber.Cmp(first.Certificates[0].SerialNumber) == 0 {
			t.Fatal("serial did not change")
		}
		if now.PrivateKey.Public().(interface{ Equal(crypto.PublicKey) bool }).Equal(first.PrivateKey.Public()) {
			t.Fatal("the key was not replaced at renewal")
		}
	})
}

// TestSurvivesOutage: while the identity service is down the source keeps
// serving the current SVID and retries; it recovers when the service
// returns. An SVID that expires during a longer outage is no longer served.
func TestSurvivesOutage(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c := newCertifier(t, webID)
		s := newSource(t, c)
		before := serial(t, s)
		c.down.Store(true)
		calls := c.calls.Load()
		time.Sleep(50 * time.Minute)
		if serial(t, s) != before {
			t.Fatal("SVID changed while the service was down")
		}
		if c.calls.Load()-calls < 3 {
			t.Fatalf("only %d attempts during the outage; want retries", c.calls.Load()-calls)
		}
		c.down.Store(false)
		time.Sleep(5 * time.Minute)
		if serial(t, s) == before {
			t.Fatal("no new SVID within 5 minutes of the service returning")
		}

		// A long outage: the SVID expires and is not served past NotAfter.
		c.down.Store(true)
		time.Sleep(61 * time.Minute)
		if _, err := s.GetX509SVID(); err == nil {
			t.Fatal("served an expired SVID")
		}
		c.down.Store(false)
		time.Sleep(2 * time.Minute)
		if _, err := s.GetX509SVID(); err != nil {
			t.Fatalf("did not recover after the outage: %v", err)
		}
	})
}

// TestNewBundleWithoutRestart: a root added by the CA reaches the source's
// bundle at the next renewal.
func TestNewBundleWithoutRestart(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c := newCertifier(t, webID)
		s := newSource(t, c)
		b, err := s.GetX509BundleForTrustDomain(td)
		if err != nil || len(b.X509Authorities()) != 1 {
			t.Fatalf("bundle = %v, %v", b, err)
		}
		if err := c.ca.PrepareRoot(t.Context()); err != nil {
			t.Fatal(err)
		}
		<-s.Updated()
		b, _ = s.GetX509BundleForTrustDomain(td)
		if len(b.X509Authorities()) != 2 {
			t.Fatalf("bundle has %d roots after the CA added one, want 2", len(b.X509Authorities()))
		}
		if _, err := s.GetX509BundleForTrustDomain(spiffeid.RequireTrustDomainFromString("other.example")); err == nil {
			t.Fatal("returned a bundle for another trust domain")
		}
	})
}

// TestRefusesBadResponses: an SVID for another key, or one that does not
// verify against the bundle it came with, is never installed.
func TestRefusesBadResponses(t *testing.T) {
	c := newCertifier(t, webID)
	other := newCertifier(t, webID) // another CA entirely
	var mode atomic.Int32
	bad := certifierFunc(func(ctx context.Context, req *identityv1.CertifyRequest) (*identityv1.CertifyResponse, error) {
		resp, err := c.Certify(ctx, req)
		if err != nil {
			return nil, err
		}
		switch mode.Load() {
		case 1: // bundle of another CA
			resp.TrustBundle = [][]byte{other.ca.Bundle()[0].Raw}
		case 2: // an SVID for a key we do not hold
			stolen, _ := other.Certify(ctx, req)
			resp.SvidChain, resp.TrustBundle = stolen.SvidChain, stolen.TrustBundle
			resp.SvidChain[0] = mustSVIDForOtherKey(t, other)
		}
		return resp, nil
	})
	for _, m := range []int32{1, 2} {
		mode.Store(m)
		ctx, cancel := context.WithTimeout(t.Context(), 100*time.Millisecond)
		_, err := source.New(ctx, source.Config{Certifier: bad, TrustDomain: td, Logger: quiet, MinBackoff: 10 * time.Millisecond, Token: func() (string, error) { return "t", nil }})
		cancel()
		if err == nil {
			t.Fatalf("mode %d: a bad response was accepted", m)
		}
	}
}

type certifierFunc func(context.Context, *identityv1.CertifyRequest) (*identityv1.CertifyResponse, error)

func (f certifierFunc) Certify(ctx context.Context, req *identityv1.CertifyRequest, _ ...grpc.CallOption) (*identityv1.CertifyResponse, error) {
	return f(ctx, req)
}

func mustSVIDForOtherKey(t *testing.T, c *certifier) []byte {
	t.Helper()
	s := newSource(t, c)
	svid, err := s.GetX509SVID()
	if err != nil {
		t.Fatal(err)
	}
	return svid.Certificates[0].Raw
}

// TestTLSConfigFromSource: go-spiffe's tlsconfig works with the source as
// it is, on a real loopback mutual-TLS handshake.
func TestTLSConfigFromSource(t *testing.T) {
	c := newCertifier(t, webID)
	server := newSource(t, c)
	clientCert := newCertifier(t, spiffeid.RequireFromString("spiffe://cluster.local/ns/shop/sa/db"))
	clientCert.ca = c.ca // same trust domain, same CA
	client := newSource(t, clientCert)

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	peers := make(chan string, 4)
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			tc := tls.Server(conn, tlsconfig.MTLSServerConfig(server, server, tlsconfig.AuthorizeID(clientCert.id)))
			if err := tc.Handshake(); err == nil {
				id, _ := spiffeid.FromURI(tc.ConnectionState().PeerCertificates[0].URIs[0])
				peers <- id.String()
			}
			tc.Close()
		}
	}()
	dial := func() string {
		conn, err := tls.Dial("tcp", ln.Addr().String(), tlsconfig.MTLSClientConfig(client, client, tlsconfig.AuthorizeID(webID)))
		if err != nil {
			t.Fatalf("handshake: %v", err)
		}
		defer conn.Close()
		return conn.ConnectionState().PeerCertificates[0].SerialNumber.String()
	}
	s1 := dial()
	if got := <-peers; got != "spiffe://cluster.local/ns/shop/sa/db" {
		t.Fatalf("server saw %q", got)
	}
	if s1 != serial(t, server) {
		t.Fatal("server presented something other than its source's SVID")
	}
}

// TestSetBundle: the controller's pushed bundle replaces the one that came
// with the SVID at once; a bundle that would trust nothing, or holds a
// certificate that is not a CA, changes nothing.
func TestSetBundle(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c := newCertifier(t, webID)
		s := newSource(t, c)
		if err := c.ca.PrepareRoot(t.Context()); err != nil {
			t.Fatal(err)
		}
		roots := c.ca.Bundle()
		svid, err := s.GetX509SVID()
		if err != nil {
			t.Fatal(err)
		}
		before, _ := s.GetX509BundleForTrustDomain(td)
		for name, bad := range map[string][]*x509.Certificate{
			"empty":     nil,
			"leaf":      {svid.Certificates[0]},
			"leaf too":  {roots[0], svid.Certificates[0]},
			"nil entry": {roots[0], nil},
		} {
			if err := s.SetBundle(bad); err == nil {
				t.Errorf("%s: SetBundle accepted it", name)
			}
			if b, _ := s.GetX509BundleForTrustDomain(td); !b.Equal(before) {
				t.Fatalf("%s: a refused bundle changed the source's", name)
			}
		}
		updated := s.Updated()
		if err := s.SetBundle(roots); err != nil {
			t.Fatal(err)
		}
		<-updated
		b, _ := s.GetX509BundleForTrustDomain(td)
		if len(b.X509Authorities()) != 2 || !b.X509Authorities()[1].Equal(roots[1]) {
			t.Fatalf("bundle after SetBundle has %d roots, want the CA's 2", len(b.X509Authorities()))
		}
	})
}

// TestAppSVIDs: an app's source asks for the mark and gets it; the
// proxy's does not; an app's SVID without the mark is refused.
func TestAppSVIDs(t *testing.T) {
	c := newCertifier(t, webID)
	for _, app := range []bool{false, true} {
		s, err := source.New(t.Context(), source.Config{Certifier: c, TrustDomain: td, Logger: quiet, App: app, Token: func() (string, error) { return "t", nil }})
		if err != nil {
			t.Fatal(err)
		}
		svid, err := s.GetX509SVID()
		s.Close()
		if err != nil {
			t.Fatal(err)
		}
		if got := appsvid.Marked(svid.Certificates[0]); got != app {
			t.Errorf("App %t: the SVID is marked %t", app, got)
		}
	}
	// A CA that does not mark (an older controller): refused.
	unmarked := certifierFunc(func(ctx context.Context, req *identityv1.CertifyRequest) (*identityv1.CertifyResponse, error) {
		csr, err := x509.ParseCertificateRequest(req.Csr)
		if err != nil {
			return nil, err
		}
		csr.Extensions = nil
		return c.sign(csr)
	})
	for _, app := range []bool{false, true} {
		ctx, cancel := context.WithTimeout(t.Context(), 200*time.Millisecond)
		s, err := source.New(ctx, source.Config{Certifier: unmarked, TrustDomain: td, Logger: quiet, App: app, MinBackoff: 10 * time.Millisecond, Token: func() (string, error) { return "t", nil }})
		cancel()
		if s != nil {
			s.Close()
		}
		// The proxy's source takes it (the answer is otherwise good); the
		// app's refuses it.
		if (err == nil) == app {
			t.Errorf("App %t: an unmarked SVID: err %v", app, err)
		}
	}
}
