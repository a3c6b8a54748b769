package proxy_test

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/status"

	"github.com/mesh-dev/mesh/internal/testpki"
	"github.com/mesh-dev/mesh/proxy"
)

// statusService answers UnaryCall with the status asked for.
type statusService struct {
	testgrpc.UnimplementedTestServiceServer
}

func (statusService) UnaryCall(_ context.Context, req *testgrpc.SimpleRequest) (*testgrpc.SimpleResponse, error) {
	if c := req.GetResponseStatus().GetCode(); c != 0 {
		return nil, status.Error(codes.Code(c), req.GetResponseStatus().GetMessage())
	}
	return &testgrpc.SimpleResponse{Payload: req.GetPayload()}, nil
}

// TestGRPCStatusesThroughPool: unary calls through both proxies over the
// pooled path keep their status, OK and errors alike (a trailers-only
// response must stay trailers-only), under concurrency.
func TestGRPCStatusesThroughPool(t *testing.T) {
	lb := newLoopback(t, time.Second)
	gs := grpc.NewServer()
	testgrpc.RegisterTestServiceServer(gs, statusService{})
	lb.handler.Store(&handlerBox{gs})
	conn, err := grpc.NewClient("passthrough:///backend", grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "tcp", lb.outbound)
		}))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	client := testgrpc.NewTestServiceClient(conn)
	const calls, workers = 2000, 8
	var mu sync.Mutex
	bad := map[string]int{}
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < calls; i += workers {
				req := &testgrpc.SimpleRequest{}
				want := codes.OK
				if i%2 == 1 {
					want = codes.NotFound
					req.ResponseStatus = &testgrpc.EchoStatus{Code: int32(codes.NotFound), Message: "no"}
				}
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				_, err := client.UnaryCall(ctx, req)
				cancel()
				if status.Code(err) != want {
					mu.Lock()
					bad[err.Error()]++
					mu.Unlock()
				}
			}
		}()
	}
	wg.Wait()
	if len(bad) > 0 {
		t.Fatalf("calls with the wrong status: %v", bad)
	}
}

// destFunc is a Destinations the test writes as a function.
type destFunc func(netip.AddrPort) (proxy.Destination, error)

func (f destFunc) Lookup(_ context.Context, a netip.AddrPort) (proxy.Destination, error) { return f(a) }

// serviceRig is an outbound proxy A whose every connection goes to the
// Service address svc, resolved by dests, and server-side proxies on
// loopback: good (in front of the app) and noApp (in front of a port
// where nothing listens, as in a pod whose app has just exited).
type serviceRig struct {
	svc      netip.AddrPort
	outbound string
	good     netip.AddrPort
	noApp    netip.AddrPort
	regA     *prometheus.Registry
	regGood  *prometheus.Registry
	app      *atomic.Pointer[handlerBox]
	dests    atomic.Pointer[proxy.Destination]
	received atomic.Int64
}

// startProxy runs a proxy until the returned stop is called, or the test
// ends.
func startProxy(tb testing.TB, cfg proxy.Config) (stop func()) {
	tb.Helper()
	p, err := proxy.New(cfg)
	if err != nil {
		tb.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				tb.Errorf("proxy: %v", err)
			}
		})
	}
	tb.Cleanup(stop)
	return stop
}

func newServiceRig(tb testing.TB) *serviceRig {
	tb.Helper()
	pki := testpki.New(tb, "cluster.local")
	quiet := slog.New(slog.DiscardHandler)
	r := &serviceRig{svc: netip.MustParseAddrPort("198.18.77.1:80"), app: &atomic.Pointer[handlerBox]{}}
	r.app.Store(&handlerBox{http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		r.received.Add(1)
		io.Copy(io.Discard, req.Body)
		w.Write([]byte("ok " + req.Proto))
	})})
	appLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	var protos http.Protocols
	protos.SetHTTP1(true)
	protos.SetUnencryptedHTTP2(true)
	appSrv := &http.Server{Protocols: &protos, Handler: http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) { r.app.Load().h.ServeHTTP(w, req) })}
	go appSrv.Serve(appLn)
	tb.Cleanup(func() { appSrv.Close() })
	appAddr := netip.MustParseAddrPort(appLn.Addr().String())
	// Nothing listens on port 1 of loopback (a freed port could be taken
	// by another listener of the test).
	deadAddr := netip.MustParseAddrPort("127.0.0.1:1")

	r.good, r.noApp = netip.MustParseAddrPort(freeAddr(tb)), netip.MustParseAddrPort(freeAddr(tb))
	r.regGood = prometheus.NewRegistry()
	for _, s := range []struct {
		in, app netip.AddrPort
		reg     *prometheus.Registry
	}{{r.good, appAddr, r.regGood}, {r.noApp, deadAddr, prometheus.NewRegistry()}} {
		startProxy(tb, proxy.Config{
			Identity: pki.Source(tb, serverID.String()), TrustDomain: pki.TD, Destinations: proxy.StaticDestinations{},
			InboundAddr: s.in.String(), OutboundAddr: "127.0.0.1:0", AdminAddr: "-", Logger: quiet, DrainTimeout: time.Second,
			Registerer: s.reg, OriginalDst: func(*net.TCPConn) (netip.AddrPort, error) { return s.app, nil },
		})
	}
	r.outbound = freeAddr(tb)
	r.regA = prometheus.NewRegistry()
	startProxy(tb, proxy.Config{
		Identity: pki.Source(tb, clientID.String()), TrustDomain: pki.TD,
		Destinations: destFunc(func(a netip.AddrPort) (proxy.Destination, error) {
			if a == r.svc {
				return *r.dests.Load(), nil
			}
			return proxy.Destination{}, nil
		}),
		InboundAddr: "127.0.0.1:0", OutboundAddr: r.outbound, AdminAddr: "-", Logger: quiet, DrainTimeout: time.Second,
		Registerer:  r.regA,
		OriginalDst: func(*net.TCPConn) (netip.AddrPort, error) { return r.svc, nil },
	})
	r.setEndpoints()
	waitUp(tb, r.outbound)
	waitUp(tb, r.good.String())
	waitUp(tb, r.noApp.String())
	return r
}

func (r *serviceRig) setEndpoints(eps ...netip.AddrPort) {
	d := proxy.Destination{Service: true, Name: "shop/web"}
	for _, a := range eps {
		d.Endpoints = append(d.Endpoints, proxy.Endpoint{Addr: a, Meshed: true, Identity: serverID})
	}
	r.dests.Store(&d)
}

func (r *serviceRig) client(keepAlive bool) *http.Client {
	return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		DisableKeepAlives: !keepAlive,
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "tcp", r.outbound)
		},
	}}
}

func (r *serviceRig) grpcClient(t *testing.T) testgrpc.TestServiceClient {
	conn, err := grpc.NewClient("passthrough:///web", grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "tcp", r.outbound)
		}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return testgrpc.NewTestServiceClient(conn)
}

// TestOutboundServiceFailures: what the application sees when a Service
// cannot serve a request, for HTTP and gRPC, and that requests nothing
// processed go to another endpoint.
func TestOutboundServiceFailures(t *testing.T) {
	r := newServiceRig(t)
	gs := grpc.NewServer()
	testgrpc.RegisterTestServiceServer(gs, statusService{})
	plain := r.app.Load()
	grpcApp := &handlerBox{http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if req.ProtoMajor == 2 && strings.HasPrefix(req.Header.Get("Content-Type"), "application/grpc") {
			r.received.Add(1)
			gs.ServeHTTP(w, req)
			return
		}
		plain.h.ServeHTTP(w, req)
	})}
	r.app.Store(grpcApp)
	c := r.client(true)
	g := r.grpcClient(t)
	get := func(method, body string) (int, string, string) {
		t.Helper()
		req, _ := http.NewRequest(method, "http://web/x", strings.NewReader(body))
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, resp.Header.Get(proxy.ProxyErrorHeader), string(b)
	}

	t.Run("no endpoints", func(t *testing.T) {
		r.setEndpoints()
		code, reason, _ := get(http.MethodGet, "")
		if code != http.StatusServiceUnavailable || !strings.HasPrefix(reason, "no_endpoints: ") || !strings.Contains(reason, "shop/web") {
			t.Fatalf("HTTP: %d %q; want 503 naming no_endpoints and the Service", code, reason)
		}
		_, err := g.UnaryCall(t.Context(), &testgrpc.SimpleRequest{})
		if status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), "no_endpoints") {
			t.Fatalf("gRPC: %v; want UNAVAILABLE naming no_endpoints", err)
		}
		if n := metric(t, r.regA, "mesh_proxy_http_requests_total", map[string]string{"service": "shop/web", "error": "no_endpoints"}); n != 2 {
			t.Fatalf("requests counted with error no_endpoints: %v, want 2", n)
		}
	})

	t.Run("only endpoint unreachable", func(t *testing.T) {
		r.setEndpoints(netip.MustParseAddrPort("127.0.0.1:1"))
		code, reason, _ := get(http.MethodPost, "body")
		if code != http.StatusServiceUnavailable || !strings.HasPrefix(reason, "connect_failed: ") {
			t.Fatalf("%d %q; want 503 connect_failed", code, reason)
		}
	})

	// Nothing reached an application: the request goes to another
	// endpoint, POST included, body and all; the app gets it once.
	for _, tc := range []struct {
		name   string
		noApp  bool // the bad endpoint is a proxy whose app is gone; else nothing listens
		reason string
		method string
		body   string
	}{
		{"connect failure, POST with a body", false, "connect_failed", http.MethodPost, strings.Repeat("b", 10<<10)},
		{"server proxy cannot reach its app, POST with a body", true, "not_delivered", http.MethodPost, strings.Repeat("b", 10<<10)},
		{"server proxy cannot reach its app, GET", true, "not_delivered", http.MethodGet, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// A rig of its own: the balancer remembers failed endpoints.
			r := newServiceRig(t)
			bad := netip.MustParseAddrPort("127.0.0.1:1")
			if tc.noApp {
				bad = r.noApp
			}
			r.setEndpoints(bad, r.good)
			c := r.client(true)
			tried := 0.0
			for i := 0; i < 50 && tried == 0; i++ {
				// Until the bad endpoint was picked first (random), and
				// the request went on to the good one.
				r.received.Store(0)
				req, _ := http.NewRequest(tc.method, "http://web/x", strings.NewReader(tc.body))
				resp, err := c.Do(req)
				if err != nil {
					t.Fatal(err)
				}
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if resp.StatusCode != http.StatusOK || resp.Header.Get(proxy.ProxyErrorHeader) != "" || !strings.HasPrefix(string(b), "ok ") {
					t.Fatalf("request %d: %d %q %q; want the app's answer", i, resp.StatusCode, resp.Header.Get(proxy.ProxyErrorHeader), b)
				}
				if n := r.received.Load(); n != 1 {
					t.Fatalf("request %d: the app received it %d times", i, n)
				}
				tried = metric(t, r.regA, "mesh_proxy_http_retries_total", map[string]string{"reason": tc.reason})
			}
			if tried != 1 {
				t.Fatalf("%v %s retries; want 1 (the bad endpoint is then ejected)", tried, tc.reason)
			}
		})
	}

	t.Run("a body too large to keep is not sent twice", func(t *testing.T) {
		r.setEndpoints(r.noApp)
		code, reason, _ := get(http.MethodPost, strings.Repeat("b", 200<<10))
		if code != http.StatusServiceUnavailable || !strings.HasPrefix(reason, "app_unreachable") {
			t.Fatalf("%d %q; want the server proxy's 503", code, reason)
		}
	})

	// A peer that accepts TCP and then says nothing (a slowloris of a
	// server): the Service's connect timeout, not the proxy's 10s default,
	// bounds the wait for its handshake.
	t.Run("connect timeout", func(t *testing.T) {
		hole, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer hole.Close()
		var held []net.Conn
		var mu sync.Mutex
		go func() {
			for {
				c, err := hole.Accept()
				if err != nil {
					return
				}
				mu.Lock()
				held = append(held, c)
				mu.Unlock()
			}
		}()
		defer func() {
			mu.Lock()
			for _, c := range held {
				c.Close()
			}
			mu.Unlock()
		}()
		d := proxy.Destination{Service: true, Name: "shop/web", ConnectTimeout: 200 * time.Millisecond,
			Endpoints: []proxy.Endpoint{{Addr: netip.MustParseAddrPort(hole.Addr().String()), Meshed: true, Identity: serverID}}}
		r.dests.Store(&d)
		start := time.Now()
		code, reason, _ := get(http.MethodGet, "")
		if code != http.StatusServiceUnavailable || !strings.HasPrefix(reason, "handshake_failed: ") {
			t.Fatalf("%d %q; want 503 handshake_failed", code, reason)
		}
		if took := time.Since(start); took > 3*time.Second {
			t.Fatalf("answered after %s: the Service's 200ms connect timeout was not applied", took)
		}
	})

	t.Run("request timeout", func(t *testing.T) {
		slow := make(chan struct{})
		defer close(slow)
		r.app.Store(&handlerBox{http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
			select {
			case <-slow:
			case <-req.Context().Done():
			}
		})})
		defer r.app.Store(grpcApp)
		d := proxy.Destination{Service: true, Name: "shop/web", RequestTimeout: 300 * time.Millisecond,
			Endpoints: []proxy.Endpoint{{Addr: r.good, Meshed: true, Identity: serverID}}}
		r.dests.Store(&d)
		start := time.Now()
		code, reason, _ := get(http.MethodGet, "")
		if code != http.StatusGatewayTimeout || !strings.HasPrefix(reason, "timeout") {
			t.Fatalf("%d %q; want 504 timeout", code, reason)
		}
		if took := time.Since(start); took > 5*time.Second {
			t.Fatalf("answered after %s", took)
		}
		_, err := g.UnaryCall(t.Context(), &testgrpc.SimpleRequest{})
		if status.Code(err) != codes.DeadlineExceeded {
			t.Fatalf("gRPC: %v; want DEADLINE_EXCEEDED", err)
		}
	})
}

// TestOutboundPooling: many application connections, with and without
// keep-alive, HTTP/1.1 and gRPC, share one pooled connection: one
// handshake; HTTP/1.1 reaches the app as HTTP/1.1.
func TestOutboundPooling(t *testing.T) {
	r := newServiceRig(t)
	r.setEndpoints(r.good)
	for _, keep := range []bool{true, false} {
		c := r.client(keep)
		for range 50 {
			resp, err := c.Get("http://web/")
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if string(b) != "ok HTTP/1.1" {
				t.Fatalf("the app answered %q; want it to have seen HTTP/1.1", b)
			}
		}
	}
	if n := metric(t, r.regA, "mesh_proxy_tls_handshakes_total", map[string]string{"direction": "outbound"}); n != 1 {
		t.Fatalf("%v handshakes for 100 requests on 51 application connections; want 1 (pooled)", n)
	}
	if n := metric(t, r.regGood, "mesh_proxy_http_requests_total", map[string]string{"direction": "inbound", "peer": clientID.String(), "status_class": "2xx"}); n != 100 {
		t.Fatalf("the server proxy counted %v requests from the client, want 100", n)
	}
	if n := metric(t, r.regA, "mesh_proxy_http_requests_total", map[string]string{"direction": "outbound", "service": "shop/web", "peer": serverID.String(), "route": "/", "method": "GET"}); n != 100 {
		t.Fatalf("the client proxy counted %v requests to shop/web, want 100", n)
	}
}

// TestOutboundMeshHeadersNotForwarded: an application cannot make the
// server proxy believe it spoke HTTP/1.1, or that a request was not
// delivered, and an app's response cannot carry mesh's error headers.
func TestOutboundMeshHeadersNotForwarded(t *testing.T) {
	r := newServiceRig(t)
	r.setEndpoints(r.good)
	var seen atomic.Pointer[http.Header]
	r.app.Store(&handlerBox{http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		h := req.Header.Clone()
		seen.Store(&h)
		w.Header().Set(proxy.ProxyErrorHeader, "forged")
		w.Header().Set("Mesh-Not-Delivered", "1")
		w.Write([]byte("ok"))
	})})
	req, _ := http.NewRequest(http.MethodGet, "http://web/", nil)
	req.Header.Set(proxy.OrigProtoHeader, "HTTP/1.0")
	req.Header.Set("Mesh-Not-Delivered", "1")
	req.Header.Set(proxy.ProxyErrorHeader, "x")
	resp, err := r.client(true).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	for _, h := range []string{proxy.OrigProtoHeader, "Mesh-Not-Delivered", proxy.ProxyErrorHeader} {
		if v := (*seen.Load()).Get(h); v != "" {
			t.Errorf("the app received %s: %q", h, v)
		}
		if v := resp.Header.Get(h); v != "" {
			t.Errorf("the client received %s: %q from the app's response", h, v)
		}
	}
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status %d", resp.StatusCode)
	}
}

// BenchmarkOutbound: one request through both proxies to a Service, on the
// pooled HTTP path and on the opaque path (the port declared opaque: an
// mTLS connection per application connection), with the application's
// connection kept alive or new for every request.
func BenchmarkOutbound(b *testing.B) {
	for _, path := range []string{"pooled", "opaque"} {
		for _, conn := range []string{"keepalive", "new-connection"} {
			b.Run(path+"/"+conn, func(b *testing.B) {
				r := newServiceRig(b)
				d := proxy.Destination{Service: true, Name: "shop/web", Endpoints: []proxy.Endpoint{{Addr: r.good, Meshed: true, Identity: serverID}}}
				if path == "opaque" {
					d.Protocol = proxy.ProtocolOpaque
				}
				r.dests.Store(&d)
				c := r.client(conn == "keepalive")
				do := func() {
					resp, err := c.Get("http://web/")
					if err != nil {
						b.Fatal(err)
					}
					_, _ = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
				}
				do()
				b.ReportAllocs()
				b.ResetTimer()
				for b.Loop() {
					do()
				}
			})
		}
	}
}

// TestAppReadinessWaitsForProxy: the kubelet's rewritten readiness probes
// fail while the proxy is not ready (no policy, destinations or SVID yet),
// so the pod is nobody's endpoint before its proxy can serve; liveness is
// the app's alone.
func TestAppReadinessWaitsForProxy(t *testing.T) {
	pki := testpki.New(t, "cluster.local")
	app := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.Write([]byte("app ok")) })
	p, err := proxy.New(proxy.Config{
		Identity: pki.Source(t, serverID.String()), TrustDomain: pki.TD, Destinations: proxy.StaticDestinations{},
		AppHealth: app, Logger: slog.New(slog.DiscardHandler),
	})
	if err != nil {
		t.Fatal(err)
	}
	h := p.AdminHandler() // not running: not ready
	for path, want := range map[string]int{
		"/app-health/web/readyz":   http.StatusServiceUnavailable,
		"/app-health/web/livez":    http.StatusOK,
		"/app-health/web/startupz": http.StatusOK,
	} {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
		if rec.Code != want {
			t.Errorf("%s while the proxy is not ready: %d, want %d", path, rec.Code, want)
		}
	}
}
