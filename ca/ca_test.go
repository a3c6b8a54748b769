package ca_test

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"log/slog"
	"maps"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/mesh-dev/mesh/ca"
	"github.com/mesh-dev/mesh/identity/appsvid"
)

var (
	td = spiffeid.RequireTrustDomainFromString("cluster.local")
	t0 = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

	quiet = slog.New(slog.DiscardHandler)
)

// clock is a settable clock.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.now }
func (c *clock) Add(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

func newCA(t *testing.T, store ca.Store, clk *clock) *ca.CA {
	t.Helper()
	c, err := ca.New(t.Context(), ca.Config{TrustDomain: td, Store: store, Now: clk.Now, Logger: quiet})
	if err != nil {
		t.Fatalf("ca.New: %v", err)
	}
	return c
}

func csrFor(t testing.TB, key crypto.Signer) *x509.CertificateRequest {
	t.Helper()
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	if err != nil {
		t.Fatal(err)
	}
	csr, err := x509.ParseCertificateRequest(der)
	if err != nil {
		t.Fatal(err)
	}
	return csr
}

func p256(t testing.TB) crypto.Signer {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// verify checks an SVID with go-spiffe against a bundle at time at.
func verify(t *testing.T, svid *ca.SVID, roots []*x509.Certificate, at time.Time) error {
	t.Helper()
	b := x509bundle.FromX509Authorities(td, roots)
	_, _, err := x509svid.Verify(svid.Chain, b, x509svid.WithTime(at))
	return err
}

func TestBootstrapAndSign(t *testing.T) {
	store := &ca.MemoryStore{}
	clk := &clock{now: t0}
	c := newCA(t, store, clk)

	roots := c.Bundle()
	if len(roots) != 1 {
		t.Fatalf("bundle has %d roots, want 1", len(roots))
	}
	root := roots[0]
	if pub, ok := root.PublicKey.(*ecdsa.PublicKey); !ok || pub.Curve != elliptic.P256() {
		t.Errorf("root key is %T, want ECDSA P-256", root.PublicKey)
	}
	if got := root.NotAfter.Sub(t0); got < 364*24*time.Hour || got > 366*24*time.Hour {
		t.Errorf("root lifetime %s, want about a year", got)
	}
	if got := c.IssuerNotAfter().Sub(t0); got != 30*24*time.Hour {
		t.Errorf("issuer lifetime %s, want 30 days", got)
	}

	id := spiffeid.RequireFromString("spiffe://cluster.local/ns/shop/sa/web")
	svid, err := c.SignSVID(csrFor(t, p256(t)), id, 0)
	if err != nil {
		t.Fatal(err)
	}
	leaf, issuer := svid.Chain[0], svid.Chain[1]
	if len(leaf.URIs) != 1 || leaf.URIs[0].String() != id.String() {
		t.Errorf("URIs = %v", leaf.URIs)
	}
	if leaf.IsCA || leaf.KeyUsage != x509.KeyUsageDigitalSignature {
		t.Errorf("IsCA=%v KeyUsage=%#x", leaf.IsCA, leaf.KeyUsage)
	}
	if got := leaf.NotAfter.Sub(t0); got != time.Hour {
		t.Errorf("SVID lifetime %s after now, want 1h", got)
	}
	if !leaf.NotBefore.Before(t0) {
		t.Errorf("NotBefore %s not backdated", leaf.NotBefore)
	}
	if leaf.SerialNumber.BitLen() < 64 {
		t.Errorf("serial %s too short", leaf.SerialNumber)
	}
	if got := issuer.PermittedURIDomains; len(got) != 1 || got[0] != "cluster.local" {
		t.Errorf("issuer PermittedURIDomains = %v, want [cluster.local]", got)
	}
	if !issuer.MaxPathLenZero || issuer.MaxPathLen != 0 {
		t.Errorf("issuer path length not constrained to 0")
	}
	if err := verify(t, svid, roots, t0); err != nil {
		t.Fatalf("x509svid.Verify: %v", err)
	}

	// A second CA on the same store loads, it does not bootstrap again.
	c2 := newCA(t, store, clk)
	if !c2.Bundle()[0].Equal(root) || store.Saves() != 1 {
		t.Fatalf("second CA did not load the stored one (saves=%d)", store.Saves())
	}
}

func TestSignRefuses(t *testing.T) {
	clk := &clock{now: t0}
	c := newCA(t, &ca.MemoryStore{}, clk)
	id := spiffeid.RequireFromString("spiffe://cluster.local/ns/shop/sa/web")
	rsa1024, _ := rsa.GenerateKey(rand.Reader, 1024)
	p224, _ := ecdsa.GenerateKey(elliptic.P224(), rand.Reader)
	tests := []struct {
		name string
		key  crypto.Signer
		id   spiffeid.ID
		ttl  time.Duration
		want string
	}{
		{"weak RSA", rsa1024, id, 0, "RSA key of 1024 bits is too weak"},
		{"P-224", p224, id, 0, "unsupported ECDSA curve P-224"},
		{"other trust domain", p256(t), spiffeid.RequireFromString("spiffe://evil.example/ns/shop/sa/web"), 0, `not in trust domain "cluster.local"`},
		{"ttl over max", p256(t), id, 25 * time.Hour, "outside (0, 24h0m0s]"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := c.SignSVID(csrFor(t, tt.key), tt.id, tt.ttl)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("SignSVID error = %v, want %q", err, tt.want)
			}
		})
	}
	// Accepted key types.
	_, edKey, _ := ed25519.GenerateKey(rand.Reader)
	rsa2048, _ := rsa.GenerateKey(rand.Reader, 2048)
	p384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	for name, k := range map[string]crypto.Signer{"ed25519": edKey, "rsa2048": rsa2048, "p384": p384} {
		svid, err := c.SignSVID(csrFor(t, k), id, 0)
		if err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		if name == "rsa2048" && svid.Chain[0].KeyUsage != x509.KeyUsageDigitalSignature|x509.KeyUsageKeyEncipherment {
			t.Errorf("RSA SVID key usage = %#x", svid.Chain[0].KeyUsage)
		}
	}
}

func TestConfigValidation(t *testing.T) {
	tests := []struct {
		cfg  ca.Config
		want string
	}{
		{ca.Config{Store: &ca.MemoryStore{}}, "TrustDomain is required"},
		{ca.Config{TrustDomain: td}, "Store is required"},
		{ca.Config{TrustDomain: td, Store: &ca.MemoryStore{}, SVIDTTL: 2 * time.Hour, MaxSVIDTTL: time.Hour}, "SVIDTTL 2h0m0s exceeds MaxSVIDTTL 1h0m0s"},
		{ca.Config{TrustDomain: td, Store: &ca.MemoryStore{}, MaxSVIDTTL: 10 * 24 * time.Hour}, "at most a sixth of IssuerTTL"},
		{ca.Config{TrustDomain: td, Store: &ca.MemoryStore{}, IssuerTTL: 400 * 24 * time.Hour, MaxSVIDTTL: time.Hour}, "IssuerTTL 9600h0m0s exceeds RootTTL"},
		{ca.Config{TrustDomain: td, Store: &ca.MemoryStore{}, SVIDTTL: -time.Second}, "SVIDTTL is negative"},
	}
	for _, tt := range tests {
		_, err := ca.New(t.Context(), tt.cfg)
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("New(%+v) = %v, want %q", tt.cfg, err, tt.want)
		}
	}
}

// TestIssuerRotation runs the CA for 90 days on a fake clock, signing an
// SVID every 6 hours: every SVID verifies against the bundle during its
// whole life, issuers rotate at 5/6 of their life, and the root never
// changes.
func TestIssuerRotation(t *testing.T) {
	store := &ca.MemoryStore{}
	clk := &clock{now: t0}
	c := newCA(t, store, clk)
	root := c.Bundle()[0]
	id := spiffeid.RequireFromString("spiffe://cluster.local/ns/shop/sa/web")

	issuers := map[string]bool{}
	var live []*ca.SVID
	for step := 0; step < 90*4; step++ {
		if err := c.RotateIssuer(t.Context()); err != nil {
			t.Fatalf("day %d: RotateIssuer: %v", step/4, err)
		}
		svid, err := c.SignSVID(csrFor(t, p256(t)), id, 0)
		if err != nil {
			t.Fatalf("day %d: SignSVID: %v", step/4, err)
		}
		issuers[ca.Fingerprint(svid.Chain[1])] = true
		live = append(live, svid)
		now := clk.Now()
		kept := live[:0]
		for _, s := range live {
			if now.Before(s.Chain[0].NotAfter) {
				if err := verify(t, s, c.Bundle(), now); err != nil {
					t.Fatalf("day %d: SVID %s no longer verifies: %v", step/4, s.Chain[0].SerialNumber, err)
				}
				kept = append(kept, s)
			}
		}
		live = kept
		if b := c.Bundle(); len(b) != 1 || !b[0].Equal(root) {
			t.Fatalf("day %d: the bundle changed during issuer rotation", step/4)
		}
		if left := c.IssuerNotAfter().Sub(now); left < 24*time.Hour {
			t.Fatalf("day %d: the active issuer has only %s left; rotation is late", step/4, left)
		}
		clk.Add(6 * time.Hour)
	}
	// A 30-day issuer is prepared at half its life and activated at five
	// sixths, and its successor starts its life when prepared: issuers take
	// over on days 0, 25, 40, 55, 70 and 85.
	if len(issuers) != 6 {
		t.Fatalf("saw %d issuers over 90 days, want 6", len(issuers))
	}
}

// TestRootRotation walks the root rotation steps in order, checks that each
// refuses to run out of order, and that every SVID issued so far verifies
// at every step while it is valid.
func TestRootRotation(t *testing.T) {
	ctx := t.Context()
	clk := &clock{now: t0}
	c := newCA(t, &ca.MemoryStore{}, clk)
	id := spiffeid.RequireFromString("spiffe://cluster.local/ns/shop/sa/web")
	var issued []*ca.SVID
	sign := func() {
		t.Helper()
		s, err := c.SignSVID(csrFor(t, p256(t)), id, 0)
		if err != nil {
			t.Fatal(err)
		}
		issued = append(issued, s)
	}
	checkAll := func(step string) {
		t.Helper()
		for _, s := range issued {
			if clk.Now().Before(s.Chain[0].NotAfter) {
				if err := verify(t, s, c.Bundle(), clk.Now()); err != nil {
					t.Fatalf("after %s: SVID %s: %v", step, s.Chain[0].SerialNumber, err)
				}
			}
		}
	}
	wantErr := func(err error, want string) {
		t.Helper()
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Fatalf("error = %v, want %q", err, want)
		}
	}
	oldRoot := c.Bundle()[0]
	sign()
	wantErr(c.ActivateRoot(ctx), "no root is prepared")
	wantErr(c.RetireRoot(ctx), "no root is being retired")

	if err := c.PrepareRoot(ctx); err != nil {
		t.Fatal(err)
	}
	if len(c.Bundle()) != 2 {
		t.Fatalf("bundle has %d roots after PrepareRoot, want 2", len(c.Bundle()))
	}
	wantErr(c.PrepareRoot(ctx), "already prepared")
	sign() // still under the old root
	checkAll("PrepareRoot")

	clk.Add(30 * time.Minute)
	if err := c.ActivateRoot(ctx); err != nil {
		t.Fatal(err)
	}
	sign() // under the new root
	newLeaf := issued[len(issued)-1]
	if err := newLeaf.Chain[1].CheckSignatureFrom(oldRoot); err == nil {
		t.Fatal("after ActivateRoot the issuer is still signed by the old root")
	}
	checkAll("ActivateRoot")
	st, err := c.RootStatus(ctx)
	if err != nil {
		t.Fatal(err)
	}
	wantErr(c.RetireRoot(ctx), "may be valid until "+st.RetireAfter.Format(time.RFC3339))
	wantErr(c.PrepareRoot(ctx), "previous root rotation is not finished")

	clk.Add(24*time.Hour + time.Minute)
	sign()
	if err := c.RetireRoot(ctx); err != nil {
		t.Fatal(err)
	}
	if b := c.Bundle(); len(b) != 1 || b[0].Equal(oldRoot) {
		t.Fatalf("old root still trusted after RetireRoot")
	}
	checkAll("RetireRoot")
}

func TestConcurrentBootstrapConverges(t *testing.T) {
	store := &ca.MemoryStore{}
	clk := &clock{now: t0}
	var wg sync.WaitGroup
	cas := make([]*ca.CA, 4)
	for i := range cas {
		wg.Go(func() { cas[i] = newCA(t, store, clk) })
	}
	wg.Wait()
	for _, c := range cas[1:] {
		if !c.Bundle()[0].Equal(cas[0].Bundle()[0]) {
			t.Fatal("concurrent bootstraps produced different roots")
		}
	}
}

// TestStatusOneEntryPerRoot: a user-supplied bundle.pem that holds the root
// twice is one root in the status (castatus refuses two active roots).
func TestStatusOneEntryPerRoot(t *testing.T) {
	src := &ca.MemoryStore{}
	newCA(t, src, &clock{now: t0})
	data, _, _ := src.Load(t.Context())
	data[ca.KeyBundle] = append(append([]byte(nil), data[ca.KeyBundle]...), data[ca.KeyBundle]...)
	delete(data, ca.KeyRootKey)
	c, err := ca.New(t.Context(), ca.Config{TrustDomain: td, Store: storeWith(t, data), External: true, Now: (&clock{now: t0}).Now, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	st := c.Status()
	if len(st.Roots) != 1 || st.Roots[0].Role != ca.RoleActive {
		t.Fatalf("status roots %+v, want the one root, active", st.Roots)
	}
}

func TestExternalCA(t *testing.T) {
	// A user-supplied CA: made here by a CA of our own, then handed over
	// without its root key.
	src := &ca.MemoryStore{}
	clk := &clock{now: t0}
	newCA(t, src, clk)
	data, _, _ := src.Load(t.Context())
	delete(data, ca.KeyRootKey)
	user := storeWith(t, data)

	c, err := ca.New(t.Context(), ca.Config{TrustDomain: td, Store: user, External: true, Now: clk.Now, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.SignSVID(csrFor(t, p256(t)), spiffeid.RequireFromString("spiffe://cluster.local/ns/a/sa/b"), 0); err != nil {
		t.Fatal(err)
	}
	clk.Add(20 * 24 * time.Hour)
	if err := c.RotateIssuer(t.Context()); err != nil {
		t.Fatal(err)
	}
	if user.Saves() != 1 {
		t.Fatal("the CA wrote to a user-supplied store")
	}
	if err := c.PrepareRoot(t.Context()); err == nil {
		t.Fatal("PrepareRoot changed a user-supplied CA")
	}

	// Empty, broken and mismatched supplies are refused with the reason.
	if _, err := ca.New(t.Context(), ca.Config{TrustDomain: td, Store: &ca.MemoryStore{}, External: true}); err == nil || !strings.Contains(err.Error(), "supplied CA store is empty") {
		t.Fatalf("empty external store: %v", err)
	}
	bad := maps.Clone(data)
	bad[ca.KeyIssuerKey] = data[ca.KeyRootCert]
	if _, err := ca.New(t.Context(), ca.Config{TrustDomain: td, Store: storeWith(t, bad), External: true}); err == nil || !strings.Contains(err.Error(), "issuer.key") {
		t.Fatalf("broken issuer key: %v", err)
	}
	other := spiffeid.RequireTrustDomainFromString("other.example")
	if _, err := ca.New(t.Context(), ca.Config{TrustDomain: other, Store: storeWith(t, data), External: true, Now: clk.Now, Logger: quiet}); err == nil || !strings.Contains(err.Error(), "constrained to [cluster.local]") {
		t.Fatalf("issuer for another trust domain: %v", err)
	}
}

// BenchmarkSignSVID measures the CA's signing throughput (SVIDs per
// second), validation of every minted SVID included.
func BenchmarkSignSVID(b *testing.B) {
	c, err := ca.New(b.Context(), ca.Config{TrustDomain: td, Store: &ca.MemoryStore{}, Logger: quiet})
	if err != nil {
		b.Fatal(err)
	}
	csr := csrFor(b, p256(b))
	id := spiffeid.RequireFromString("spiffe://cluster.local/ns/shop/sa/web")
	b.ReportAllocs()
	for b.Loop() {
		if _, err := c.SignSVID(csr, id, 0); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "svids/s")
}

// storeWith is a store holding data, as a user would supply it.
func storeWith(t *testing.T, data map[string][]byte) *ca.MemoryStore {
	t.Helper()
	s := &ca.MemoryStore{}
	if _, err := s.Save(t.Context(), data, ""); err != nil {
		t.Fatal(err)
	}
	return s
}

// TestAppSVIDMark: the CA marks an SVID whose CSR asks for the app mark,
// copies nothing else a CSR asks for (names, other extensions), and marks
// no other SVID.
func TestAppSVIDMark(t *testing.T) {
	c := newCA(t, &ca.MemoryStore{}, &clock{now: t0})
	id := spiffeid.RequireFromString("spiffe://cluster.local/ns/shop/sa/web")
	sign := func(req *x509.CertificateRequest) *x509.Certificate {
		t.Helper()
		der, err := x509.CreateCertificateRequest(rand.Reader, req, p256(t))
		if err != nil {
			t.Fatal(err)
		}
		csr, err := x509.ParseCertificateRequest(der)
		if err != nil {
			t.Fatal(err)
		}
		svid, err := c.SignSVID(csr, id, 0)
		if err != nil {
			t.Fatal(err)
		}
		return svid.Chain[0]
	}
	marked := sign(&x509.CertificateRequest{DNSNames: []string{"evil.example"}, ExtraExtensions: []pkix.Extension{appsvid.Request(), {Id: asn1.ObjectIdentifier{1, 2, 3, 4}, Value: []byte{0x05, 0x00}}}})
	if !appsvid.Marked(marked) {
		t.Error("an SVID asked with the app mark is not marked")
	}
	if len(marked.DNSNames) != 0 || len(marked.URIs) != 1 || marked.URIs[0].String() != id.String() {
		t.Errorf("the CA copied names from the CSR: DNS %v, URIs %v", marked.DNSNames, marked.URIs)
	}
	for _, e := range marked.Extensions {
		if e.Id.Equal(asn1.ObjectIdentifier{1, 2, 3, 4}) {
			t.Error("the CA copied another extension from the CSR")
		}
	}
	if appsvid.Marked(sign(&x509.CertificateRequest{})) {
		t.Error("an SVID asked without the mark is marked")
	}
}
