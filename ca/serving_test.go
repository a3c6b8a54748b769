package ca_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/mesh-dev/mesh/ca"
)

const webhookName = "mesh-webhook.mesh-system.svc"

// TestSignServing: a serving certificate carries exactly the names asked
// for, serverAuth only, no URI (so no SPIFFE peer takes it for an SVID),
// verifies to the bundle, and is refused for requests an attacker or a
// bug could make.
func TestSignServing(t *testing.T) {
	clk := &clock{now: t0}
	c := newCA(t, &ca.MemoryStore{}, clk)
	key := p256(t)
	chain, err := c.SignServing(ca.ServingRequest{PublicKey: key.Public(), DNSNames: []string{webhookName, webhookName + ".cluster.local"}, IPs: []net.IP{net.ParseIP("198.18.0.1")}, TTL: 24 * time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	leaf := chain[0]
	if len(chain) != 2 {
		t.Fatalf("chain has %d certificates, want leaf and issuer", len(chain))
	}
	if got := strings.Join(leaf.DNSNames, ","); got != webhookName+","+webhookName+".cluster.local" {
		t.Errorf("DNS names %q", got)
	}
	if len(leaf.IPAddresses) != 1 || !leaf.IPAddresses[0].Equal(net.ParseIP("198.18.0.1")) {
		t.Errorf("IPs %v", leaf.IPAddresses)
	}
	if len(leaf.URIs) != 0 || leaf.IsCA || len(leaf.ExtKeyUsage) != 1 || leaf.ExtKeyUsage[0] != x509.ExtKeyUsageServerAuth {
		t.Errorf("leaf URIs %v, CA %v, EKUs %v; want no URI, not a CA, serverAuth only", leaf.URIs, leaf.IsCA, leaf.ExtKeyUsage)
	}
	if want := t0.Add(24 * time.Hour); !leaf.NotAfter.Equal(want) || !leaf.NotBefore.Equal(t0.Add(-ca.DefaultBackdate)) {
		t.Errorf("validity %s to %s, want %s to %s", leaf.NotBefore, leaf.NotAfter, t0.Add(-ca.DefaultBackdate), want)
	}
	if _, _, err := x509svid.Verify(chain, x509bundle.FromX509Authorities(td, c.Bundle()), x509svid.WithTime(t0)); err == nil {
		t.Error("a SPIFFE verifier accepted the serving certificate as an SVID")
	}
	pool := x509.NewCertPool()
	for _, r := range c.Bundle() {
		pool.AddCert(r)
	}
	inter := x509.NewCertPool()
	inter.AddCert(chain[1])
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: pool, Intermediates: inter, CurrentTime: t0, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err == nil {
		t.Error("the serving certificate verified as a client certificate")
	}
	if _, err := leaf.Verify(x509.VerifyOptions{DNSName: "other.mesh-system.svc", Roots: pool, Intermediates: inter, CurrentTime: t0}); err == nil {
		t.Error("the serving certificate verified for a name it was not issued for")
	}

	rsaSmall, err := rsa.GenerateKey(rand.Reader, 1024)
	if err != nil {
		t.Fatal(err)
	}
	p224, err := ecdsa.GenerateKey(elliptic.P224(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	many := make([]string, 33)
	for i := range many {
		many[i] = "a" + strings.Repeat("b", i) + ".svc"
	}
	refused := []struct {
		name string
		req  ca.ServingRequest
		want string
	}{
		{"no key", ca.ServingRequest{DNSNames: []string{webhookName}, TTL: time.Hour}, "no public key"},
		{"no names", ca.ServingRequest{PublicKey: key.Public(), TTL: time.Hour}, "no DNS name or IP"},
		{"zero TTL", ca.ServingRequest{PublicKey: key.Public(), DNSNames: []string{webhookName}}, "lifetime 0s is outside"},
		{"negative TTL", ca.ServingRequest{PublicKey: key.Public(), DNSNames: []string{webhookName}, TTL: -time.Hour}, "is outside"},
		{"a year", ca.ServingRequest{PublicKey: key.Public(), DNSNames: []string{webhookName}, TTL: 365 * 24 * time.Hour}, "is outside (0, 168h0m0s]"},
		{"wildcard", ca.ServingRequest{PublicKey: key.Public(), DNSNames: []string{"*.mesh-system.svc"}, TTL: time.Hour}, `"*.mesh-system.svc" is not a DNS name`},
		{"trailing dot", ca.ServingRequest{PublicKey: key.Public(), DNSNames: []string{webhookName + "."}, TTL: time.Hour}, "is not a DNS name"},
		{"upper case", ca.ServingRequest{PublicKey: key.Public(), DNSNames: []string{"Mesh.svc"}, TTL: time.Hour}, "is not a DNS name"},
		{"NUL", ca.ServingRequest{PublicKey: key.Public(), DNSNames: []string{"a\x00.evil.com"}, TTL: time.Hour}, "is not a DNS name"},
		{"empty name", ca.ServingRequest{PublicKey: key.Public(), DNSNames: []string{""}, TTL: time.Hour}, "is not a DNS name"},
		{"unspecified IP", ca.ServingRequest{PublicKey: key.Public(), IPs: []net.IP{net.IPv4zero}, TTL: time.Hour}, "is not a usable IP"},
		{"malformed IP", ca.ServingRequest{PublicKey: key.Public(), IPs: []net.IP{{1, 2, 3}}, TTL: time.Hour}, "is not a usable IP"},
		{"too many names", ca.ServingRequest{PublicKey: key.Public(), DNSNames: many, TTL: time.Hour}, "33 names, more than 32"},
		{"weak RSA", ca.ServingRequest{PublicKey: rsaSmall.Public(), DNSNames: []string{webhookName}, TTL: time.Hour}, "too weak"},
		{"P-224", ca.ServingRequest{PublicKey: p224.Public(), DNSNames: []string{webhookName}, TTL: time.Hour}, "unsupported ECDSA curve"},
	}
	for _, tc := range refused {
		t.Run(tc.name, func(t *testing.T) {
			_, err := c.SignServing(tc.req)
			if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.HasPrefix(err.Error(), "ca: ") {
				t.Fatalf("error = %v, want one containing %q", err, tc.want)
			}
		})
	}
}

// TestServingCapsAtIssuer: a serving certificate never outlives the
// issuer that signed it.
func TestServingCapsAtIssuer(t *testing.T) {
	clk := &clock{now: t0}
	c := newCA(t, &ca.MemoryStore{}, clk)
	clk.Add(ca.DefaultIssuerTTL - time.Hour) // an hour of issuer left
	chain, err := c.SignServing(ca.ServingRequest{PublicKey: p256(t).Public(), DNSNames: []string{webhookName}, TTL: 24 * time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	if !chain[0].NotAfter.Equal(c.IssuerNotAfter()) {
		t.Fatalf("NotAfter %s, want the issuer's %s", chain[0].NotAfter, c.IssuerNotAfter())
	}
}

// TestServingHandshake: a client that trusts only the CA's bundle (as the
// API server does with caBundle) completes a real TLS handshake with the
// serving certificate, before and after a root rotation's activation.
func TestServingHandshake(t *testing.T) {
	clk := &clock{now: time.Now()}
	c := newCA(t, &ca.MemoryStore{}, clk)
	handshake := func(step string) {
		t.Helper()
		key := p256(t)
		chain, err := c.SignServing(ca.ServingRequest{PublicKey: key.Public(), DNSNames: []string{webhookName}, IPs: []net.IP{net.IPv4(127, 0, 0, 1)}, TTL: time.Hour})
		if err != nil {
			t.Fatal(err)
		}
		cert := tls.Certificate{PrivateKey: key, Leaf: chain[0]}
		for _, ce := range chain {
			cert.Certificate = append(cert.Certificate, ce.Raw)
		}
		lis, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS13})
		if err != nil {
			t.Fatal(err)
		}
		defer lis.Close()
		done := make(chan error, 1)
		go func() {
			conn, err := lis.Accept()
			if err != nil {
				done <- err
				return
			}
			defer conn.Close()
			done <- conn.(*tls.Conn).Handshake()
		}()
		pool := x509.NewCertPool()
		for _, r := range c.Bundle() {
			pool.AddCert(r)
		}
		conn, err := tls.Dial("tcp", lis.Addr().String(), &tls.Config{RootCAs: pool, ServerName: webhookName})
		if err != nil {
			t.Fatalf("%s: client handshake: %v", step, err)
		}
		conn.Close()
		if err := <-done; err != nil {
			t.Fatalf("%s: server handshake: %v", step, err)
		}
	}
	handshake("bootstrap")
	if err := c.PrepareRoot(t.Context()); err != nil {
		t.Fatal(err)
	}
	if err := c.ActivateRoot(t.Context()); err != nil {
		t.Fatal(err)
	}
	handshake("after ActivateRoot")
}
