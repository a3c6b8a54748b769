package proxy_test

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"reflect"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/mesh-dev/mesh/internal/testpki"
	"github.com/mesh-dev/mesh/proxy"
)

// loopback is two proxies on 127.0.0.1 with no interception: A's
// OriginalDst answers B's inbound address, B's answers the app's. It
// exercises everything but iptables, so benchmarks and leak checks run
// without root.
type loopback struct {
	appAddr   string // the app behind B
	outbound  string // A's outbound listener: "the app's outgoing connection"
	stopA     func()
	stopB     func()
	regA      *prometheus.Registry
	appServer *http.Server
	// handler is the app's (HTTP/1.1 and h2c): "ok" unless a test sets
	// another.
	handler atomic.Pointer[handlerBox]
}

type handlerBox struct{ h http.Handler }

func freeAddr(tb testing.TB) string {
	tb.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func newLoopback(tb testing.TB, drain time.Duration) *loopback {
	tb.Helper()
	pki := testpki.New(tb, "cluster.local")
	// The app: HTTP and a raw echo on one port, told apart by first byte.
	appLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	lb := &loopback{appAddr: appLn.Addr().String()}
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, _ *http.Request) { w.Write([]byte("ok")) })
	lb.handler.Store(&handlerBox{mux})
	var protos http.Protocols
	protos.SetHTTP1(true)
	protos.SetUnencryptedHTTP2(true)
	lb.appServer = &http.Server{Protocols: &protos, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		lb.handler.Load().h.ServeHTTP(w, r)
	})}
	go lb.appServer.Serve(appLn)
	tb.Cleanup(func() { lb.appServer.Close() })

	appPort := appLn.Addr().(*net.TCPAddr).Port
	inB, outA := freeAddr(tb), freeAddr(tb)
	inBAddr := netip.MustParseAddrPort(inB)
	quiet := slog.New(slog.DiscardHandler)

	start := func(cfg proxy.Config) func() { return startProxy(tb, cfg) }
	lb.stopB = start(proxy.Config{
		Identity: pki.Source(tb, serverID.String()), TrustDomain: pki.TD, Destinations: proxy.StaticDestinations{},
		InboundAddr: inB, OutboundAddr: "127.0.0.1:0", AdminAddr: "-", Logger: quiet, DrainTimeout: drain,
		OriginalDst: func(*net.TCPConn) (netip.AddrPort, error) {
			return netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(appPort)), nil
		},
	})
	lb.regA = prometheus.NewRegistry()
	lb.stopA = start(proxy.Config{
		Identity: pki.Source(tb, clientID.String()), TrustDomain: pki.TD,
		Destinations: proxy.StaticDestinations{inBAddr: serverID},
		InboundAddr:  "127.0.0.1:0", OutboundAddr: outA, AdminAddr: "-", Logger: quiet, DrainTimeout: drain,
		Registerer:  lb.regA,
		OriginalDst: func(*net.TCPConn) (netip.AddrPort, error) { return inBAddr, nil },
	})
	lb.outbound = outA
	waitUp(tb, outA)
	waitUp(tb, inB)
	return lb
}

func waitUp(tb testing.TB, addr string) {
	tb.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		// A probe connection the proxy will refuse or pass: either proves
		// the listener is up.
		c, err := net.Dial("tcp", addr)
		if err == nil {
			c.Close()
			return
		}
		if time.Now().After(deadline) {
			tb.Fatalf("%s not listening: %v", addr, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// client is an HTTP client whose every connection goes to A's outbound
// listener, as iptables would send it.
func (lb *loopback) client(keepAlive bool) *http.Client {
	return &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		DisableKeepAlives: !keepAlive,
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "tcp", lb.outbound)
		},
	}}
}

func get(c *http.Client) error {
	resp, err := c.Get("http://backend/")
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || string(b) != "ok" {
		return fmt.Errorf("body %q, %v", b, err)
	}
	return nil
}

// TestNoGoroutineLeak: after a hundred connections and a stop, the
// proxies leave no goroutine behind.
func TestNoGoroutineLeak(t *testing.T) {
	before := runtime.NumGoroutine()
	lb := newLoopback(t, time.Second)
	c := lb.client(false)
	for i := range 100 {
		if err := get(c); err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
	}
	c.CloseIdleConnections()
	lb.stopA()
	lb.stopB()
	lb.appServer.Close()
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > before+2 {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			t.Fatalf("%d goroutines before, %d after:\n%s", before, runtime.NumGoroutine(), buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestGracefulDrain: on stop, an open connection may finish its work within
// the drain bound; new connections are refused; after the bound the
// proxy closes what is left.
func TestGracefulDrain(t *testing.T) {
	lb := newLoopback(t, 2*time.Second)
	conn, err := net.Dial("tcp", lb.outbound)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	br := bufio.NewReader(conn)
	ask := func() error {
		_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.WriteString(conn, "GET / HTTP/1.1\r\nHost: b\r\n\r\n"); err != nil {
			return err
		}
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		_, err = io.ReadAll(resp.Body)
		return err
	}
	if err := ask(); err != nil {
		t.Fatal(err)
	}
	stopped := make(chan struct{})
	start := time.Now()
	go func() { lb.stopA(); close(stopped) }()
	// The listener closes as the stop begins; a fixed sleep raced that on
	// a loaded machine. The drain lasts 2 s, so the ask below still falls
	// inside it.
	waitFor(t, 1500*time.Millisecond, "the listener closed while draining", func() error {
		c, err := net.DialTimeout("tcp", lb.outbound, time.Second)
		if err == nil {
			c.Close()
			return errors.New("a new connection was accepted")
		}
		return nil
	})
	if err := ask(); err != nil {
		t.Fatalf("open connection broken during the drain: %v", err)
	}
	select {
	case <-stopped:
	case <-time.After(10 * time.Second):
		t.Fatal("the proxy did not stop after its drain bound")
	}
	if took := time.Since(start); took < 2*time.Second {
		t.Fatalf("stopped after %s, before the drain bound, with a connection open", took)
	}
	if err := ask(); err == nil {
		t.Fatal("the connection outlived the drain bound")
	}
}

// BenchmarkConnection is the per-connection path: a new connection from the
// app through both proxies (an mTLS handshake, resumed after the first),
// one request, close.
func BenchmarkConnection(b *testing.B) {
	lb := newLoopback(b, time.Second)
	c := lb.client(false)
	b.ReportAllocs()
	for b.Loop() {
		if err := get(c); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	resumed := metric(b, lb.regA, "mesh_proxy_tls_handshakes_total", map[string]string{"resumed": "true"})
	b.ReportMetric(resumed/float64(b.N), "resumed/op")
}

// BenchmarkRequest is the per-request path: HTTP requests on one kept-alive
// connection through both proxies.
func BenchmarkRequest(b *testing.B) {
	lb := newLoopback(b, time.Second)
	c := lb.client(true)
	if err := get(c); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if err := get(c); err != nil {
			b.Fatal(err)
		}
	}
}

// TestAdmin: the admin port serves liveness, readiness with a valid SVID,
// the SVID's public facts, Prometheus metrics, and a shutdown for Jobs.
func TestAdmin(t *testing.T) {
	pki := testpki.New(t, "cluster.local")
	src := pki.Source(t, serverID.String())
	reg := prometheus.NewRegistry()
	admin := freeAddr(t)
	var inForce atomic.Pointer[proxy.PolicyInfo]
	p, err := proxy.New(proxy.Config{
		Identity: src, TrustDomain: pki.TD, Destinations: proxy.StaticDestinations{},
		InboundAddr: "127.0.0.1:0", OutboundAddr: "127.0.0.1:0", AdminAddr: admin,
		Policy:     inForce.Load,
		Registerer: reg, Gatherer: reg, Logger: slog.New(slog.DiscardHandler),
	})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- p.Run(t.Context()) }()
	base := "http://" + admin
	body := func(method, path string) (int, string) {
		t.Helper()
		req, _ := http.NewRequest(method, base+path, nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return 0, err.Error()
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		if code, _ := body("GET", "/ready"); code == http.StatusOK {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("/ready never answered 200")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if code, b := body("GET", "/live"); code != 200 || b != "ok\n" {
		t.Fatalf("/live = %d %q", code, b)
	}
	code, b := body("GET", "/identity")
	var info proxy.IdentityInfo
	if err := json.Unmarshal([]byte(b), &info); code != 200 || err != nil {
		t.Fatalf("/identity = %d %q: %v", code, b, err)
	}
	svid, _ := src.GetX509SVID()
	if info.SPIFFEID != serverID.String() || info.SerialNumber != svid.Certificates[0].SerialNumber.Text(16) || len(info.BundleRoots) != 1 || info.InboundMode != proxy.Strict ||
		info.TrustDomain != serverID.TrustDomain().Name() || info.KeyType != "ECDSA P-256" || !info.Ready || !info.NotAfter.Equal(svid.Certificates[0].NotAfter) {
		t.Fatalf("/identity = %+v", info)
	}
	if info.SignedByRoot != info.BundleRoots[0] {
		t.Fatalf("/identity signedByRoot = %q, want the only root %q", info.SignedByRoot, info.BundleRoots[0])
	}
	// The documented JSON names (docs/meshctl.md) are an interface.
	for _, k := range []string{`"spiffeID"`, `"serialNumber"`, `"notBefore"`, `"notAfter"`, `"issuer"`, `"trustDomain"`, `"bundleRoots"`, `"signedByRoot"`, `"keyType"`, `"ready"`} {
		if !strings.Contains(b, k) {
			t.Errorf("/identity lacks %s: %s", k, b)
		}
	}
	if strings.Contains(b, "PRIVATE") {
		t.Fatal("/identity leaks key material")
	}
	// /policy: 503 until a policy is in force, then what it is.
	if code, b := body("GET", "/policy"); code != http.StatusServiceUnavailable {
		t.Fatalf("/policy with none in force = %d %q, want 503", code, b)
	}
	since := time.Date(2026, 11, 24, 12, 0, 0, 0, time.UTC)
	want := proxy.PolicyInfo{Source: proxy.SourceController, Version: "v1", DefaultMode: "deny",
		Policies: []proxy.PolicyRef{{Namespace: "shop", Name: "backend", Generation: 3}}, Since: since}
	inForce.Store(&want)
	code, b = body("GET", "/policy")
	var got proxy.PolicyInfo
	if err := json.Unmarshal([]byte(b), &got); code != 200 || err != nil || !reflect.DeepEqual(got, want) {
		t.Fatalf("/policy = %d %q (%v), want %+v", code, b, err, want)
	}
	// The documented JSON names (docs/meshctl.md) are an interface.
	for _, k := range []string{`"source"`, `"version"`, `"defaultMode"`, `"policies"`, `"namespace"`, `"name"`, `"generation"`, `"since"`} {
		if !strings.Contains(b, k) {
			t.Errorf("/policy lacks %s: %s", k, b)
		}
	}
	if code, b := body("GET", "/metrics"); code != 200 || !strings.Contains(b, "mesh_proxy_svid_expiry_timestamp_seconds") {
		t.Fatalf("/metrics = %d, missing the SVID expiry", code)
	}
	// Without a valid SVID the proxy is not ready.
	src.Set(nil)
	deadline = time.Now().Add(5 * time.Second)
	for {
		if code, _ := body("GET", "/ready"); code == http.StatusServiceUnavailable {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("/ready stayed 200 without an SVID")
		}
		time.Sleep(50 * time.Millisecond)
	}
	if code, _ := body("GET", "/shutdown"); code != http.StatusMethodNotAllowed {
		t.Fatalf("GET /shutdown = %d, want 405", code)
	}
	if code, _ := body("POST", "/shutdown"); code != 200 {
		t.Fatalf("POST /shutdown = %d", code)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the proxy did not stop after /shutdown")
	}
}
