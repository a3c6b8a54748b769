package fullstack_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/mesh-dev/mesh/authz"
	"github.com/mesh-dev/mesh/authz/audit"
	"github.com/mesh-dev/mesh/e2e/clustertest"
	"github.com/mesh-dev/mesh/e2e/meshtest"
	"github.com/mesh-dev/mesh/identity"
	"github.com/mesh-dev/mesh/identity/identitytest"
	"github.com/mesh-dev/mesh/identity/source"
	"github.com/mesh-dev/mesh/proxy"
)

func TestMain(m *testing.M) { os.Exit(clustertest.Run(m)) }

var quiet = slog.New(slog.DiscardHandler)

func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// TestPodsTalkThroughTheMesh runs the whole chain: two pods of the real API
// server get SVIDs from the identity service with their pod-bound tokens,
// their proxies speak mTLS with those SVIDs, the server's proxy enforces an
// AuthorizationPolicy against the client's attested identity, and the
// decisions land in a verifiable audit log. (Interception is tested on its
// own in package proxy; here the client connects to its proxy directly.)
func TestPodsTalkThroughTheMesh(t *testing.T) {
	c := clustertest.Get(t)
	ctx := t.Context()
	cs := c.Client()
	td := identitytest.TrustDomain

	// The control plane: the CA in a Secret, the identity service on TLS.
	svc, err := identitytest.Start(ctx, cs, identity.ServerConfig{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(svc.Close)
	if err := identitytest.Namespace(ctx, cs, "shop", "frontend", "backend"); err != nil {
		t.Fatal(err)
	}

	// Two pods, each proving who it is with its own pod-bound token.
	sourceFor := func(sa, pod string) *source.Source {
		t.Helper()
		p, err := identitytest.Pod(ctx, cs, "shop", pod, sa)
		if err != nil {
			t.Fatal(err)
		}
		token, err := identitytest.Token(ctx, cs, p, identity.DefaultAudience, true)
		if err != nil {
			t.Fatal(err)
		}
		src, err := source.New(ctx, source.Config{
			Certifier: svc.Client, TrustDomain: td, Logger: quiet,
			Token: func() (string, error) { return token, nil },
		})
		if err != nil {
			t.Fatalf("SVID for %s: %v", pod, err)
		}
		t.Cleanup(func() { src.Close() })
		return src
	}
	frontend, backend := sourceFor("frontend", "frontend-0"), sourceFor("backend", "backend-0")
	backendID := spiffeid.RequireFromString("spiffe://cluster.local/ns/shop/sa/backend")
	if svid, _ := backend.GetX509SVID(); svid.ID != backendID {
		t.Fatalf("backend's SVID is for %s", svid.ID)
	}

	// The backend app, and the policy its proxy enforces.
	app := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "backend-0 saw %s at %s", r.Header.Get(proxy.PeerIdentityHeader), r.URL.Path)
	})}
	appLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go app.Serve(appLn)
	t.Cleanup(func() { app.Close() })
	policies, err := authz.ParsePolicies([]byte(`
apiVersion: security.mesh.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: backend, namespace: shop}
spec:
  selector: {matchLabels: {app: backend}}
  action: ALLOW
  rules:
  - from: [{identities: ["spiffe://cluster.local/ns/shop/sa/frontend"]}]
    to: [{methods: ["GET"], paths: ["/api/*"]}]
`))
	if err != nil {
		t.Fatal(err)
	}
	tbl, err := authz.Compile(authz.Input{TrustDomain: td, Policies: policies, Workload: authz.Workload{Namespace: "shop", Pod: "backend-0", Labels: map[string]string{"app": "backend"}}})
	if err != nil {
		t.Fatal(err)
	}
	var auditLog meshtest.SyncBuffer
	// Signed with the SVID the identity service issued to backend.
	w, err := audit.New(audit.Config{Out: &auditLog, Stream: "shop/backend-0", SVIDs: backend})
	if err != nil {
		t.Fatal(err)
	}
	auditCtx, stopAudit := context.WithCancel(context.Background())
	auditDone := make(chan error, 1)
	go func() { auditDone <- w.Run(auditCtx) }()

	// The two proxies, with the SVIDs the identity service issued.
	appPort := uint16(appLn.Addr().(*net.TCPAddr).Port)
	inB, outA := freeAddr(t), freeAddr(t)
	inBAddr := netip.MustParseAddrPort(inB)
	start := func(cfg proxy.Config) {
		t.Helper()
		cfg.TrustDomain, cfg.Logger, cfg.AdminAddr = td, quiet, "-"
		p, err := proxy.New(cfg)
		if err != nil {
			t.Fatal(err)
		}
		pctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- p.Run(pctx) }()
		t.Cleanup(func() { cancel(); <-done })
	}
	start(proxy.Config{
		Identity: backend, Destinations: proxy.StaticDestinations{}, Authorizer: authz.NewEnforcer(tbl, w),
		InboundAddr: inB, OutboundAddr: "127.0.0.1:0",
		OriginalDst: func(*net.TCPConn) (netip.AddrPort, error) {
			return netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), appPort), nil
		},
	})
	start(proxy.Config{
		Identity: frontend, Destinations: proxy.StaticDestinations{inBAddr: backendID},
		InboundAddr: "127.0.0.1:0", OutboundAddr: outA,
		OriginalDst: func(*net.TCPConn) (netip.AddrPort, error) { return inBAddr, nil },
	})
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "tcp", outA)
	}}}
	get := func(path string) (int, string) {
		t.Helper()
		var resp *http.Response
		deadline := time.Now().Add(10 * time.Second)
		for {
			resp, err = client.Get("http://backend.shop" + path)
			if err == nil || time.Now().After(deadline) {
				break
			}
			time.Sleep(50 * time.Millisecond) // the proxies are still binding
		}
		if err != nil {
			t.Fatalf("GET %s: %v", path, err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}

	if code, body := get("/api/orders"); code != 200 || body != "backend-0 saw spiffe://cluster.local/ns/shop/sa/frontend at /api/orders" {
		t.Fatalf("allowed request: %d %q", code, body)
	}
	if code, body := get("/admin"); code != http.StatusForbidden || !strings.Contains(body, "shop/backend") {
		t.Fatalf("denied request: %d %q", code, body)
	}

	stopAudit()
	if err := <-auditDone; err != nil {
		t.Fatal(err)
	}
	res, err := audit.Verify(strings.NewReader(auditLog.String()), audit.VerifyOptions{Bundle: svc.Bundle, Strict: true})
	if err != nil || len(res.Streams) != 1 || res.Streams[0].Signer != backendID || res.Streams[0].Checkpoints == 0 || res.Streams[0].Unanchored != 0 || !strings.Contains(auditLog.String(), `"source.identity":"spiffe://cluster.local/ns/shop/sa/frontend"`) {
		t.Fatalf("audit log (%+v, %v):\n%s", res, err, auditLog.String())
	}
}
