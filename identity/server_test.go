package identity_test

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"log/slog"
	"math/big"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"golang.org/x/time/rate"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/mesh-dev/mesh/ca"
	"github.com/mesh-dev/mesh/e2e/cluster"
	"github.com/mesh-dev/mesh/e2e/clustertest"
	"github.com/mesh-dev/mesh/e2e/prereq"
	"github.com/mesh-dev/mesh/identity"
	identityv1 "github.com/mesh-dev/mesh/identity/api/v1"
	"github.com/mesh-dev/mesh/identity/identitytest"
)

func TestMain(m *testing.M) { os.Exit(clustertest.Run(m)) }

var td = spiffeid.RequireTrustDomainFromString("cluster.local")

// syncBuffer collects audit events from concurrent handlers.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

// events returns the audit events written so far, decoded.
func (s *syncBuffer) events(t testing.TB) []map[string]any {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []map[string]any
	for _, line := range strings.Split(strings.TrimSpace(s.b.String()), "\n") {
		if line == "" {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("audit line is not JSON: %q", line)
		}
		out = append(out, m)
	}
	return out
}

// env is an identity service on the real local cluster, reached over real
// TLS with its own SVID.
type env struct {
	c       *cluster.Cluster
	cs      kubernetes.Interface
	ca      *ca.CA
	client  identityv1.IdentityClient
	audit   *syncBuffer
	reg     *prometheus.Registry
	bundle  *x509bundle.Bundle
	self    *identity.SelfSource
	svcAddr string
	svc     *identitytest.Service
}

var (
	envOnce sync.Once
	shared  *env
	envErr  error
)

func setup(t testing.TB) *env {
	t.Helper()
	c := clustertest.Get(t)
	envOnce.Do(func() { shared, envErr = newEnv(c) })
	if envErr != nil {
		t.Fatalf("identity env: %v", envErr)
	}
	return shared
}

func newEnv(c *cluster.Cluster) (*env, error) {
	ctx := context.Background()
	cs := c.Client()
	e := &env{c: c, cs: cs, audit: &syncBuffer{}, reg: prometheus.NewRegistry()}
	svc, err := identitytest.Start(ctx, cs, identity.ServerConfig{
		Audit:      slog.New(slog.NewJSONHandler(e.audit, nil)),
		Registerer: e.reg,
		// Generous enough for the tests; TestRateLimit, TestSourceLimit
		// and TestReviewConcurrency have their own servers.
		RatePerPod:    rate.Inf,
		RatePerSource: rate.Inf,
	})
	if err != nil {
		return nil, err
	}
	if err := identitytest.Namespace(ctx, cs, "shop", "web", "db"); err != nil {
		return nil, err
	}
	e.ca, e.self, e.bundle, e.svcAddr, e.client, e.svc = svc.CA, svc.Self, svc.Bundle, svc.Addr, svc.Client, svc
	return e, nil
}

var (
	controllerID = identitytest.ControllerID
	quiet        = slog.New(slog.DiscardHandler)
)

// clientCreds trusts only the bundle the client was given at start, and
// only the controller's identity.
func (e *env) clientCreds() grpc.DialOption { return e.svc.ClientCreds() }

// pod creates a scheduled pod of sa in shop, which stays Pending.
func (e *env) pod(t testing.TB, name, sa string) *corev1.Pod {
	t.Helper()
	p, err := identitytest.Pod(t.Context(), e.cs, "shop", name, sa)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func (e *env) token(t testing.TB, pod *corev1.Pod, audience string, bound bool) string {
	t.Helper()
	tok, err := identitytest.Token(t.Context(), e.cs, pod, audience, bound)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func p256(t testing.TB) crypto.Signer {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func csr(t testing.TB, key crypto.Signer, uris ...string) []byte {
	t.Helper()
	tmpl := &x509.CertificateRequest{}
	for _, u := range uris {
		parsed, err := url.Parse(u)
		if err != nil {
			t.Fatal(err)
		}
		tmpl.URIs = append(tmpl.URIs, parsed)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

func (e *env) issued() float64 { return certifyCount(e.reg, "issued") }

// certifyCount reads mesh_identity_certify_total{result} from a registry.
func certifyCount(reg *prometheus.Registry, result string) float64 {
	mfs, _ := reg.Gather()
	for _, mf := range mfs {
		if mf.GetName() != "mesh_identity_certify_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "result" && l.GetValue() == result {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	return 0
}

// TestCertify is the happy path on the real API server: a pod-bound token
// yields an SVID whose only SAN is the pod's SPIFFE ID, accepted by
// openssl verify and by go-spiffe with the returned bundle.
func TestCertify(t *testing.T) {
	e := setup(t)
	pod := e.pod(t, "web-ok", "web")
	key := p256(t)
	before := e.issued()
	resp, err := e.client.Certify(t.Context(), &identityv1.CertifyRequest{Csr: csr(t, key), Token: e.token(t, pod, identity.DefaultAudience, true)})
	if err != nil {
		t.Fatalf("Certify: %v", err)
	}
	const want = "spiffe://cluster.local/ns/shop/sa/web"
	if resp.SpiffeId != want {
		t.Fatalf("spiffe_id = %q, want %q", resp.SpiffeId, want)
	}
	chain := parseCerts(t, resp.SvidChain)
	roots := parseCerts(t, resp.TrustBundle)
	leaf := chain[0]
	if len(leaf.URIs) != 1 || leaf.URIs[0].String() != want || len(leaf.DNSNames)+len(leaf.IPAddresses)+len(leaf.EmailAddresses) != 0 {
		t.Fatalf("SVID names: URIs %v DNS %v IPs %v", leaf.URIs, leaf.DNSNames, leaf.IPAddresses)
	}
	if !leaf.PublicKey.(*ecdsa.PublicKey).Equal(key.Public()) {
		t.Fatal("SVID is not for the CSR's key")
	}
	if resp.ExpiresAtUnix != leaf.NotAfter.Unix() {
		t.Errorf("expires_at_unix %d != NotAfter %d", resp.ExpiresAtUnix, leaf.NotAfter.Unix())
	}
	id, _, err := x509svid.Verify(chain, x509bundle.FromX509Authorities(td, roots))
	if err != nil || id.String() != want {
		t.Fatalf("x509svid.Verify = %v, %v", id, err)
	}

	dir := t.TempDir()
	writePEM(t, filepath.Join(dir, "root.pem"), roots)
	writePEM(t, filepath.Join(dir, "chain.pem"), chain[1:])
	writePEM(t, filepath.Join(dir, "svid.pem"), chain[:1])
	out, err := exec.Command(prereq.Command(t, "openssl"), "verify", "-CAfile", filepath.Join(dir, "root.pem"), "-untrusted", filepath.Join(dir, "chain.pem"), filepath.Join(dir, "svid.pem")).CombinedOutput()
	if err != nil || !strings.Contains(string(out), ": OK") {
		t.Fatalf("openssl verify: %v\n%s", err, out)
	}

	if got := e.issued() - before; got != 1 {
		t.Fatalf("issued metric moved by %v, want 1", got)
	}
	ev := lastEvent(t, e.audit, "issued")
	if ev["spiffeID"] != want || ev["pod"] != "web-ok" || ev["serial"] != leaf.SerialNumber.Text(16) || ev["type"] != identity.AuditType {
		t.Fatalf("audit event = %v", ev)
	}
}

func lastEvent(t *testing.T, b *syncBuffer, result string) map[string]any {
	t.Helper()
	evs := b.events(t)
	for i := len(evs) - 1; i >= 0; i-- {
		if evs[i]["result"] == result {
			return evs[i]
		}
	}
	t.Fatalf("no %s audit event in %v", result, evs)
	return nil
}

// TestCertifyRefusals: each bad request is refused with the right code and
// message, nothing is signed (the issued metric stays put), and a refusal
// audit event names the reason.
func TestCertifyRefusals(t *testing.T) {
	e := setup(t)
	web := e.pod(t, "web-refusals", "web")
	gone := e.pod(t, "web-gone", "web")
	goneToken := e.token(t, gone, identity.DefaultAudience, true)
	if err := e.cs.CoreV1().Pods("shop").Delete(t.Context(), gone.Name, *metav1.NewDeleteOptions(0)); err != nil {
		t.Fatal(err)
	}
	good := e.token(t, web, identity.DefaultAudience, true)
	rsa1024, _ := rsa.GenerateKey(rand.Reader, 1024)
	badSig := csr(t, p256(t))
	badSig[len(badSig)-3] ^= 0xff

	tests := []struct {
		name  string
		csr   []byte
		token string
		code  codes.Code
		msg   string
	}{
		{"garbage token", csr(t, p256(t)), "not-a-token", codes.Unauthenticated, "token rejected"},
		{"no token", csr(t, p256(t)), "", codes.Unauthenticated, "no token"},
		{"expired token", csr(t, p256(t)), expiredToken(t, e.c, web), codes.Unauthenticated, "token rejected"},
		{"wrong audience", csr(t, p256(t)), e.token(t, web, "some-other-audience", true), codes.Unauthenticated, `token rejected for audience "identity.mesh.dev"`},
		{"not pod-bound", csr(t, p256(t)), e.token(t, web, identity.DefaultAudience, false), codes.Unauthenticated, "not bound to a pod"},
		{"deleted pod", csr(t, p256(t)), goneToken, codes.Unauthenticated, "token rejected"},
		{"other identity", csr(t, p256(t), "spiffe://cluster.local/ns/shop/sa/db"), good, codes.PermissionDenied, `token for sa "web" cannot sign: CSR asks for "spiffe://cluster.local/ns/shop/sa/db"`},
		{"other trust domain", csr(t, p256(t), "spiffe://evil.example/ns/shop/sa/web"), good, codes.PermissionDenied, "cannot sign"},
		{"extra DNS name", csrWithDNS(t), good, codes.PermissionDenied, "DNS, IP or email"},
		{"bad signature", badSig, good, codes.InvalidArgument, "CSR"},
		{"weak key", csr(t, rsa1024), good, codes.InvalidArgument, "RSA key of 1024 bits is too weak"},
		{"malformed CSR", []byte("garbage"), good, codes.InvalidArgument, "malformed CSR"},
		{"oversized CSR", make([]byte, identity.MaxCSRBytes+1), good, codes.InvalidArgument, "exceeds"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := e.issued()
			_, err := e.client.Certify(t.Context(), &identityv1.CertifyRequest{Csr: tt.csr, Token: tt.token})
			if status.Code(err) != tt.code || !strings.Contains(status.Convert(err).Message(), tt.msg) {
				t.Fatalf("Certify = %v, want %s containing %q", err, tt.code, tt.msg)
			}
			if got := e.issued() - before; got != 0 {
				t.Fatalf("a refused request moved the issued metric by %v", got)
			}
			ev := lastEvent(t, e.audit, "refused")
			if ev["code"] != tt.code.String() || ev["reason"] != status.Convert(err).Message() {
				t.Fatalf("audit event %v does not record the refusal %v", ev, err)
			}
		})
	}

	// A request over the transport limit is cut off by gRPC itself.
	_, err := e.client.Certify(t.Context(), &identityv1.CertifyRequest{Csr: make([]byte, identity.MaxRequestBytes+1), Token: good})
	if status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("oversized request: %v, want ResourceExhausted", err)
	}
}

func csrWithDNS(t *testing.T) []byte {
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{DNSNames: []string{"db.shop.svc"}}, p256(t))
	if err != nil {
		t.Fatal(err)
	}
	return der
}

// expiredToken forges nothing: it signs, with the cluster's own
// service-account key, a token for the pod whose expiry has passed, so the
// real API server rejects it for that reason alone.
func expiredToken(t *testing.T, c *cluster.Cluster, pod *corev1.Pod) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(c.Dir(), "pki", "sa.key"))
	if err != nil {
		t.Fatal(err)
	}
	blk, _ := pem.Decode(b)
	k, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	key := k.(*ecdsa.PrivateKey)
	now := time.Now()
	claims := map[string]any{
		"iss": c.ServiceAccountIssuer(), "sub": "system:serviceaccount:shop:web", "aud": []string{identity.DefaultAudience},
		"iat": now.Add(-2 * time.Hour).Unix(), "nbf": now.Add(-2 * time.Hour).Unix(), "exp": now.Add(-time.Hour).Unix(),
		"kubernetes.io": map[string]any{
			"namespace":      "shop",
			"serviceaccount": map[string]any{"name": "web", "uid": saUID(t, c, "web")},
			"pod":            map[string]any{"name": pod.Name, "uid": string(pod.UID)},
		},
	}
	enc := func(v any) string {
		j, _ := json.Marshal(v)
		return base64.RawURLEncoding.EncodeToString(j)
	}
	signing := enc(map[string]string{"alg": "ES256", "typ": "JWT"}) + "." + enc(claims)
	sum := sha256.Sum256([]byte(signing))
	r, s, err := ecdsa.Sign(rand.Reader, key, sum[:])
	if err != nil {
		t.Fatal(err)
	}
	sig := append(pad32(r), pad32(s)...)
	return signing + "." + base64.RawURLEncoding.EncodeToString(sig)
}

func pad32(n *big.Int) []byte {
	out := make([]byte, 32)
	n.FillBytes(out)
	return out
}

func saUID(t *testing.T, c *cluster.Cluster, name string) string {
	sa, err := c.Client().CoreV1().ServiceAccounts("shop").Get(t.Context(), name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return string(sa.UID)
}

// TestPodChecks: a token whose pod is terminating, or was never scheduled,
// is refused after the review.
func TestPodChecks(t *testing.T) {
	e := setup(t)
	ctx := t.Context()
	// Unscheduled: no node name.
	unsched, err := e.cs.CoreV1().Pods("shop").Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "web-unscheduled"},
		Spec:       corev1.PodSpec{ServiceAccountName: "web", Containers: []corev1.Container{{Name: "app", Image: "mesh-e2e/echo"}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	_, err = e.client.Certify(ctx, &identityv1.CertifyRequest{Csr: csr(t, p256(t)), Token: e.token(t, unsched, identity.DefaultAudience, true)})
	if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "is not scheduled") {
		t.Fatalf("unscheduled pod: %v", err)
	}

	// Terminating: a finalizer keeps the deleted pod visible.
	term := e.pod(t, "web-terminating", "web")
	term.Finalizers = []string{"e2e.mesh.dev/hold"}
	if term, err = e.cs.CoreV1().Pods("shop").Update(ctx, term, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	tok := e.token(t, term, identity.DefaultAudience, true)
	if err := e.cs.CoreV1().Pods("shop").Delete(ctx, term.Name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		p, err := e.cs.CoreV1().Pods("shop").Get(context.Background(), term.Name, metav1.GetOptions{})
		if err == nil {
			p.Finalizers = nil
			_, _ = e.cs.CoreV1().Pods("shop").Update(context.Background(), p, metav1.UpdateOptions{})
		}
	})
	_, err = e.client.Certify(ctx, &identityv1.CertifyRequest{Csr: csr(t, p256(t)), Token: tok})
	if c := status.Code(err); c != codes.PermissionDenied && c != codes.Unauthenticated {
		t.Fatalf("terminating pod: %v, want PermissionDenied or Unauthenticated", err)
	}
}

// TestRateLimit: a burst beyond the per-pod limit is refused with
// ResourceExhausted and signs nothing; another pod is unaffected, also one
// of the same ServiceAccount (every replica of a Deployment has the same
// identity: a limit per identity would starve a large one).
func TestRateLimit(t *testing.T) {
	e := setup(t)
	reg := prometheus.NewRegistry()
	srv, err := identity.NewServer(identity.ServerConfig{CA: e.ca, Kube: e.cs, RatePerPod: rate.Every(time.Hour), BurstPerPod: 2, Audit: slog.New(slog.DiscardHandler), Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	web, web2, db := e.pod(t, "web-rate", "web"), e.pod(t, "web-rate-2", "web"), e.pod(t, "db-rate", "db")
	call := func(p *corev1.Pod) error {
		_, err := srv.Certify(t.Context(), &identityv1.CertifyRequest{Csr: csr(t, p256(t)), Token: e.token(t, p, identity.DefaultAudience, true)})
		return err
	}
	for i := range 2 {
		if err := call(web); err != nil {
			t.Fatalf("call %d: %v", i, err)
		}
	}
	if err := call(web); status.Code(err) != codes.ResourceExhausted || !strings.Contains(err.Error(), "too many requests from pod shop/web-rate") {
		t.Fatalf("third call: %v, want ResourceExhausted naming the pod", err)
	}
	for _, p := range []*corev1.Pod{web2, web2, db} {
		if err := call(p); err != nil {
			t.Fatalf("pod %s limited too: %v", p.Name, err)
		}
	}
	if got := certifyCount(reg, "issued"); got != 5 {
		t.Fatalf("issued = %v, want 5", got)
	}
	if got := certifyCount(reg, "resource_exhausted"); got != 1 {
		t.Fatalf("resource_exhausted = %v, want 1", got)
	}
}

func parseCerts(t *testing.T, ders [][]byte) []*x509.Certificate {
	t.Helper()
	var out []*x509.Certificate
	for _, d := range ders {
		c, err := x509.ParseCertificate(d)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, c)
	}
	return out
}

func writePEM(t *testing.T, path string, certs []*x509.Certificate) {
	t.Helper()
	var b []byte
	for _, c := range certs {
		b = append(b, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
	}
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// BenchmarkCertify measures a full Certify over TLS gRPC, TokenReview and
// pod lookup on the local API server included.
func BenchmarkCertify(b *testing.B) {
	e := setup(b)
	pod := e.pod(b, "web-bench", "web")
	tok := e.token(b, pod, identity.DefaultAudience, true)
	req := &identityv1.CertifyRequest{Csr: csr(b, p256(b)), Token: tok}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := e.client.Certify(b.Context(), req); err != nil {
			b.Fatal(err)
		}
	}
}
