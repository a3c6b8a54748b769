package probe_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"reflect"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"

	"github.com/mesh-dev/mesh/internal/accepttest"
	"github.com/mesh-dev/mesh/internal/intorstr"
	"github.com/mesh-dev/mesh/internal/testpki"
	"github.com/mesh-dev/mesh/proxy/probe"
)

var loopback = netip.MustParseAddr("127.0.0.1")

// seen is what an app received.
type seen struct {
	Method, URI, Host string
	Header            http.Header
	Body              string
}

// recorder is an app that records every request it receives.
type recorder struct {
	mu   sync.Mutex
	reqs []seen
}

func (a *recorder) record(r *http.Request) {
	body, _ := io.ReadAll(io.LimitReader(r.Body, 1<<20))
	a.mu.Lock()
	defer a.mu.Unlock()
	a.reqs = append(a.reqs, seen{Method: r.Method, URI: r.RequestURI, Host: r.Host, Header: r.Header.Clone(), Body: string(body)})
}

func (a *recorder) take() []seen {
	a.mu.Lock()
	defer a.mu.Unlock()
	out := a.reqs
	a.reqs = nil
	return out
}

func (a *recorder) uris() []string {
	var out []string
	for _, s := range a.take() {
		out = append(out, s.URI)
	}
	return out
}

func port(t *testing.T, rawURL string) int32 {
	t.Helper()
	u, err := url.Parse(rawURL)
	if err != nil {
		t.Fatal(err)
	}
	p, err := strconv.Atoi(u.Port())
	if err != nil {
		t.Fatal(err)
	}
	return int32(p)
}

// serve starts the proxy side: a real HTTP server on loopback with the
// Handler, as the admin server will mount it.
func serve(t *testing.T, cfg probe.Config) string {
	t.Helper()
	h, err := probe.New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return srv.URL
}

// kubelet GETs path from the proxy and returns the status and body.
func kubelet(t *testing.T, base, method, path string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(method, base+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, string(b)
}

// waitDone blocks a slow handler until the probe gives up, at most 5s.
func waitDone(r *http.Request) {
	select {
	case <-r.Context().Done():
	case <-time.After(5 * time.Second):
	}
}

func TestHTTPProbe(t *testing.T) {
	app := &recorder{}
	elsewhere := &recorder{} // another port of the pod: must never be reached
	other := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { elsewhere.record(r) }))
	t.Cleanup(other.Close)
	var appURL string
	mux := http.NewServeMux()
	mux.HandleFunc("/ok", func(w http.ResponseWriter, r *http.Request) {})
	mux.HandleFunc("/no-content", func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusNoContent) })
	mux.HandleFunc("/fail", func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusInternalServerError) })
	mux.HandleFunc("/missing", func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusNotFound) })
	mux.HandleFunc("/found", func(w http.ResponseWriter, r *http.Request) { http.Redirect(w, r, "/ok", http.StatusFound) })
	mux.HandleFunc("/to-fail", func(w http.ResponseWriter, r *http.Request) { http.Redirect(w, r, "/fail", http.StatusFound) })
	mux.HandleFunc("/absolute-to-fail", func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, appURL+"/fail", http.StatusTemporaryRedirect)
	})
	mux.HandleFunc("/loop", func(w http.ResponseWriter, r *http.Request) { http.Redirect(w, r, "/loop", http.StatusFound) })
	mux.HandleFunc("/other-port", func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, other.URL+"/fail", http.StatusFound)
	})
	mux.HandleFunc("/other-host", func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, strings.Replace(appURL, "127.0.0.1", "localhost", 1)+"/fail", http.StatusMovedPermanently)
	})
	mux.HandleFunc("/slow", func(w http.ResponseWriter, r *http.Request) { waitDone(r) })
	mux.HandleFunc("/400ms", func(w http.ResponseWriter, r *http.Request) { time.Sleep(400 * time.Millisecond) })
	mux.HandleFunc("/endless", func(w http.ResponseWriter, r *http.Request) {
		// Longer than the probe's timeout unless the probe stops reading.
		chunk := make([]byte, 4<<10)
		for i := 0; i < 10000 && r.Context().Err() == nil; i++ {
			if _, err := w.Write(chunk); err != nil {
				return
			}
			w.(http.Flusher).Flush()
			time.Sleep(time.Millisecond)
		}
	})
	appSrv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		app.record(r)
		mux.ServeHTTP(w, r)
	}))
	t.Cleanup(appSrv.Close)
	appURL = appSrv.URL
	tlsSrv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		app.record(r)
		mux.ServeHTTP(w, r)
	}))
	tlsSrv.Config.ErrorLog = log.New(io.Discard, "", 0) // the plain-HTTP case is expected
	tlsSrv.StartTLS()
	t.Cleanup(tlsSrv.Close)

	get := func(path string) *probe.HTTPGetAction {
		return &probe.HTTPGetAction{Path: path, Port: intorstr.FromInt32(port(t, appURL))}
	}
	tests := []struct {
		name     string
		prober   probe.Prober
		timeout  time.Duration // Config.DefaultTimeout
		status   int
		reason   string   // in the 503 body
		appSaw   []string // request URIs, in order
		maxDelay time.Duration
	}{
		{name: "200", prober: probe.Prober{HTTPGet: get("/ok")}, status: 200, appSaw: []string{"/ok"}},
		{name: "204 is success", prober: probe.Prober{HTTPGet: get("/no-content")}, status: 200, appSaw: []string{"/no-content"}},
		{name: "query is kept", prober: probe.Prober{HTTPGet: get("/ok?deep=1&x=%2F")}, status: 200, appSaw: []string{"/ok?deep=1&x=%2F"}},
		{name: "500", prober: probe.Prober{HTTPGet: get("/fail")}, status: 503, reason: "probe: http: status 500", appSaw: []string{"/fail"}},
		{name: "404", prober: probe.Prober{HTTPGet: get("/missing")}, status: 503, reason: "probe: http: status 404", appSaw: []string{"/missing"}},
		{name: "same-address redirect followed", prober: probe.Prober{HTTPGet: get("/found")}, status: 200, appSaw: []string{"/found", "/ok"}},
		{name: "same-address redirect to a failure fails", prober: probe.Prober{HTTPGet: get("/to-fail")}, status: 503,
			reason: "probe: http: status 500", appSaw: []string{"/to-fail", "/fail"}},
		{name: "absolute same-address redirect followed", prober: probe.Prober{HTTPGet: get("/absolute-to-fail")}, status: 503,
			reason: "probe: http: status 500", appSaw: []string{"/absolute-to-fail", "/fail"}},
		{name: "redirect loop stops", prober: probe.Prober{HTTPGet: get("/loop")}, status: 503, reason: `probe: http: Get "/loop": stopped after 10 redirects`,
			appSaw: slices.Repeat([]string{"/loop"}, 10)},
		{name: "redirect to another port not followed, 3xx is success", prober: probe.Prober{HTTPGet: get("/other-port")}, status: 200,
			appSaw: []string{"/other-port"}},
		{name: "redirect to another host name not followed", prober: probe.Prober{HTTPGet: get("/other-host")}, status: 200,
			appSaw: []string{"/other-host"}},
		{name: "slow app times out", prober: probe.Prober{HTTPGet: get("/slow")}, timeout: 200 * time.Millisecond, status: 503,
			reason: "probe: timed out after 200ms", appSaw: []string{"/slow"}, maxDelay: 2 * time.Second},
		{name: "timeoutSeconds overrides the default", prober: probe.Prober{HTTPGet: get("/400ms"), TimeoutSeconds: 1},
			timeout: 100 * time.Millisecond, status: 200, appSaw: []string{"/400ms"}},
		{name: "default timeout applies without timeoutSeconds", prober: probe.Prober{HTTPGet: get("/400ms")},
			timeout: 100 * time.Millisecond, status: 503, reason: "probe: timed out after 100ms", appSaw: []string{"/400ms"}},
		{name: "endless body: read bounded", prober: probe.Prober{HTTPGet: get("/endless")}, timeout: 5 * time.Second,
			status: 200, appSaw: []string{"/endless"}, maxDelay: 2 * time.Second},
		{name: "https, certificate not verified", prober: probe.Prober{HTTPGet: &probe.HTTPGetAction{
			Path: "/ok", Port: intorstr.FromInt32(port(t, tlsSrv.URL)), Scheme: probe.URISchemeHTTPS}}, status: 200, appSaw: []string{"/ok"}},
		{name: "plain http to the https port fails", prober: probe.Prober{HTTPGet: &probe.HTTPGetAction{
			Path: "/ok", Port: intorstr.FromInt32(port(t, tlsSrv.URL))}}, status: 503, reason: "probe: http: status 400", appSaw: nil},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := fmt.Sprintf("/app-health/c%d/readyz", i)
			base := serve(t, probe.Config{Probers: probe.Probers{path: tt.prober}, Target: loopback, DefaultTimeout: tt.timeout})
			app.take()
			start := time.Now()
			status, body := kubelet(t, base, http.MethodGet, path)
			if d := time.Since(start); tt.maxDelay > 0 && d > tt.maxDelay {
				t.Errorf("probe took %s, want at most %s", d, tt.maxDelay)
			}
			if status != tt.status {
				t.Errorf("status %d (%q), want %d", status, body, tt.status)
			}
			if status == 200 && body != "ok\n" {
				t.Errorf("body %q, want ok", body)
			}
			if tt.reason != "" && !strings.HasPrefix(body, tt.reason) {
				t.Errorf("body %q, want it to start with %q", body, tt.reason)
			}
			if got := app.uris(); !slices.Equal(got, tt.appSaw) {
				t.Errorf("app saw %q, want %q", got, tt.appSaw)
			}
			if got := elsewhere.take(); len(got) != 0 {
				t.Errorf("a redirect reached another port: %+v", got)
			}
		})
	}
}

// TestHTTPProbeRequest: the app sees exactly the configured probe (GET, path,
// headers, kubelet's defaults) and nothing of the kubelet's own request, even
// when the kubelet's request carries a forged identity, a body that is a
// second request, or a different path.
func TestHTTPProbeRequest(t *testing.T) {
	app := &recorder{}
	appSrv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { app.record(r) }))
	t.Cleanup(appSrv.Close)
	appPort := intorstr.FromInt32(port(t, appSrv.URL))
	appHost := strings.TrimPrefix(appSrv.URL, "http://")

	probers := probe.Probers{
		"/app-health/plain/livez": {HTTPGet: &probe.HTTPGetAction{Path: "/healthz", Port: appPort}},
		"/app-health/custom/readyz": {HTTPGet: &probe.HTTPGetAction{Path: "/ready", Port: appPort, HTTPHeaders: []probe.HTTPHeader{
			{Name: "host", Value: "web.example"},
			{Name: "User-Agent", Value: "my-probe"},
			{Name: "Accept", Value: ""},
			{Name: "x-probe", Value: "a"},
			{Name: "X-Probe", Value: "b"},
		}}},
	}
	base := serve(t, probe.Config{Probers: probers, Target: loopback})
	defaults := http.Header{"User-Agent": {probe.UserAgent}, "Accept": {"*/*"}, "Connection": {"close"}}

	tests := []struct {
		name string
		send func(t *testing.T) // the kubelet's (or an attacker's) request
		want []seen
	}{
		{
			name: "plain GET",
			send: func(t *testing.T) { kubelet(t, base, http.MethodGet, "/app-health/plain/livez") },
			want: []seen{{Method: "GET", URI: "/healthz", Host: appHost, Header: defaults}},
		},
		{
			name: "configured headers, host, user agent, no Accept",
			send: func(t *testing.T) { kubelet(t, base, http.MethodGet, "/app-health/custom/readyz") },
			want: []seen{{Method: "GET", URI: "/ready", Host: "web.example", Header: http.Header{
				"User-Agent": {"my-probe"}, "X-Probe": {"a", "b"}, "Connection": {"close"},
			}}},
		},
		{
			name: "kubelet's query, headers and body are not forwarded",
			send: func(t *testing.T) {
				req, err := http.NewRequest(http.MethodGet, base+"/app-health/plain/livez?admin=1", strings.NewReader("secret body"))
				if err != nil {
					t.Fatal(err)
				}
				req.Header.Set("X-Mesh-Peer-Identity", "spiffe://mesh.local/ns/prod/sa/admin")
				req.Header.Set("X_Mesh_Peer_Identity", "spiffe://mesh.local/ns/prod/sa/admin")
				req.Header.Set("Authorization", "Bearer stolen")
				req.Header.Set("Cookie", "session=1")
				req.Header.Set("X-Forwarded-For", "198.18.0.66")
				req.Host = "evil.example"
				resp, err := http.DefaultClient.Do(req)
				if err != nil {
					t.Fatal(err)
				}
				resp.Body.Close()
				if resp.StatusCode != 200 {
					t.Fatalf("status %d", resp.StatusCode)
				}
			},
			want: []seen{{Method: "GET", URI: "/healthz", Host: appHost, Header: defaults}},
		},
		{
			name: "smuggled second request in the body",
			send: func(t *testing.T) {
				smuggle := "DELETE /admin HTTP/1.1\r\nHost: x\r\nX-Mesh-Peer-Identity: spiffe://mesh.local/ns/prod/sa/admin\r\n\r\n"
				raw := "GET /app-health/plain/livez HTTP/1.1\r\nHost: x\r\nContent-Length: " + strconv.Itoa(len(smuggle)) +
					"\r\n\r\n" + smuggle +
					"GET /app-health/plain/livez\nHost: y\n\nDELETE /admin HTTP/1.1\r\n\r\n"
				c, err := net.Dial("tcp", strings.TrimPrefix(base, "http://"))
				if err != nil {
					t.Fatal(err)
				}
				defer c.Close()
				if _, err := io.WriteString(c, raw); err != nil {
					t.Fatal(err)
				}
				resp, err := http.ReadResponse(bufio.NewReader(c), nil)
				if err != nil {
					t.Fatal(err)
				}
				resp.Body.Close()
				if resp.StatusCode != 200 {
					t.Fatalf("status %d", resp.StatusCode)
				}
				// The bare-LF request that follows is refused by net/http;
				// whatever it answers, only one probe reaches the app.
				_ = c.SetReadDeadline(time.Now().Add(2 * time.Second))
				_, _ = io.Copy(io.Discard, c)
			},
			want: []seen{{Method: "GET", URI: "/healthz", Host: appHost, Header: defaults}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			app.take()
			tt.send(t)
			got := app.take()
			for i := range got {
				// net/http adds these itself; they are not from the kubelet.
				got[i].Header.Del("Accept-Encoding")
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Fatalf("app saw\n %+v\nwant\n %+v", got, tt.want)
			}
		})
	}
}

// TestNotProbed: paths that are not configured answer 404 and methods other
// than GET 405, without the app seeing anything.
func TestNotProbed(t *testing.T) {
	app := &recorder{}
	appSrv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { app.record(r) }))
	t.Cleanup(appSrv.Close)
	base := serve(t, probe.Config{Target: loopback, Probers: probe.Probers{
		"/app-health/web/readyz": {HTTPGet: &probe.HTTPGetAction{Path: "/ok", Port: intorstr.FromInt32(port(t, appSrv.URL))}},
	}})
	tests := []struct {
		method, path string
		status       int
	}{
		{"GET", "/app-health/web/livez", 404},
		{"GET", "/app-health/other/readyz", 404},
		{"GET", "/app-health/web/readyz/", 404},
		{"GET", "/app-health/web/readyz/../readyz", 404},
		{"GET", "/app-health/web/./readyz", 404},
		{"GET", "//app-health/web/readyz", 404},
		{"GET", "/app-health/%77eb/readyz", 404},
		{"GET", "/app-health%2Fweb%2Freadyz", 404},
		{"GET", "/APP-HEALTH/web/readyz", 404},
		{"GET", "/", 404},
		{"GET", "/ok", 404},
		{"POST", "/app-health/web/readyz", 405},
		{"PUT", "/app-health/web/readyz", 405},
		{"DELETE", "/app-health/web/readyz", 405},
		{"HEAD", "/app-health/web/readyz", 405},
		{"get", "/app-health/web/readyz", 405},
		{"POST", "/app-health/web/nope", 404},
	}
	for _, tt := range tests {
		t.Run(tt.method+" "+tt.path, func(t *testing.T) {
			status, _ := kubelet(t, base, tt.method, tt.path)
			if status != tt.status {
				t.Errorf("status %d, want %d", status, tt.status)
			}
			if got := app.take(); len(got) != 0 {
				t.Errorf("the app was probed: %+v", got)
			}
		})
	}
	// Allow names the one method.
	req, _ := http.NewRequest(http.MethodPost, base+"/app-health/web/readyz", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if got := resp.Header.Get("Allow"); got != "GET" {
		t.Errorf("Allow %q, want GET", got)
	}
	// And the configured path works, so the 404s above are not a broken handler.
	if status, body := kubelet(t, base, http.MethodGet, "/app-health/web/readyz"); status != 200 {
		t.Fatalf("configured probe: %d %q", status, body)
	}
}

func TestTCPProbe(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	accepted := make(chan []byte, 10)
	accepttest.Serve(t, ln, func(c net.Conn) {
		_ = c.SetReadDeadline(time.Now().Add(2 * time.Second))
		b, _ := io.ReadAll(c)
		accepted <- b
	})
	closed, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closedPort := closed.Addr().(*net.TCPAddr).Port
	closed.Close()

	tests := []struct {
		name   string
		port   int
		status int
		reason string
	}{
		{"listening", ln.Addr().(*net.TCPAddr).Port, 200, ""},
		{"nothing listening", closedPort, 503, "probe: tcp: dial tcp 127.0.0.1:" + strconv.Itoa(closedPort) + ": connect: connection refused"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			base := serve(t, probe.Config{Target: loopback, Probers: probe.Probers{
				"/app-health/db/livez": {TCPSocket: &probe.TCPSocketAction{Port: intorstr.FromInt(tt.port)}},
			}})
			status, body := kubelet(t, base, http.MethodGet, "/app-health/db/livez")
			if status != tt.status {
				t.Fatalf("status %d (%q), want %d", status, body, tt.status)
			}
			if tt.reason != "" && strings.TrimSpace(body) != tt.reason {
				t.Fatalf("body %q, want %q", body, tt.reason)
			}
			if tt.status == 200 {
				if b := <-accepted; len(b) != 0 {
					t.Fatalf("a TCP probe wrote %q", b)
				}
			}
		})
	}
}

func TestGRPCProbe(t *testing.T) {
	var mu sync.Mutex
	var agents []string
	record := func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		md, _ := metadata.FromIncomingContext(ctx)
		mu.Lock()
		agents = append(agents, md.Get("user-agent")...)
		mu.Unlock()
		return handler(ctx, req)
	}
	start := func(t *testing.T, withHealth bool) int32 {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		srv := grpc.NewServer(grpc.UnaryInterceptor(record))
		if withHealth {
			hs := health.NewServer()
			hs.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
			hs.SetServingStatus("up", healthpb.HealthCheckResponse_SERVING)
			hs.SetServingStatus("down", healthpb.HealthCheckResponse_NOT_SERVING)
			healthpb.RegisterHealthServer(srv, hs)
		}
		done := make(chan struct{})
		go func() { defer close(done); _ = srv.Serve(ln) }()
		t.Cleanup(func() { srv.Stop(); <-done })
		return int32(ln.Addr().(*net.TCPAddr).Port)
	}
	healthy := start(t, true)
	bare := start(t, false)
	closed, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closedPort := int32(closed.Addr().(*net.TCPAddr).Port)
	closed.Close()

	str := func(s string) *string { return &s }
	tests := []struct {
		name    string
		action  probe.GRPCAction
		status  int
		reason  string
		checked bool // the interceptor saw a Check call
	}{
		{"whole server SERVING", probe.GRPCAction{Port: healthy}, 200, "", true},
		{"empty service name is the server", probe.GRPCAction{Port: healthy, Service: str("")}, 200, "", true},
		{"service SERVING", probe.GRPCAction{Port: healthy, Service: str("up")}, 200, "", true},
		{"service NOT_SERVING", probe.GRPCAction{Port: healthy, Service: str("down")}, 503, `probe: grpc: service "down" is NOT_SERVING`, true},
		{"unknown service", probe.GRPCAction{Port: healthy, Service: str("nope")}, 503, "probe: grpc: rpc error: code = NotFound", true},
		// Calls to unregistered services never reach interceptors.
		{"no health service", probe.GRPCAction{Port: bare}, 503, "probe: grpc: the app does not implement grpc.health.v1.Health", false},
		{"nothing listening", probe.GRPCAction{Port: closedPort}, 503, "probe: grpc: rpc error: code = Unavailable", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			mu.Lock()
			agents = nil
			mu.Unlock()
			base := serve(t, probe.Config{Target: loopback, Probers: probe.Probers{
				"/app-health/api/readyz": {GRPC: &tt.action},
			}})
			status, body := kubelet(t, base, http.MethodGet, "/app-health/api/readyz")
			if status != tt.status {
				t.Fatalf("status %d (%q), want %d", status, body, tt.status)
			}
			if tt.reason != "" && !strings.HasPrefix(body, tt.reason) {
				t.Fatalf("body %q, want it to start with %q", body, tt.reason)
			}
			mu.Lock()
			defer mu.Unlock()
			if !tt.checked {
				if len(agents) != 0 {
					t.Fatalf("unexpected calls from %q", agents)
				}
				return
			}
			if len(agents) != 1 || !strings.HasPrefix(agents[0], probe.UserAgent+" ") {
				t.Fatalf("user agents %q, want one starting with %q", agents, probe.UserAgent)
			}
		})
	}
}

// TestIPv6Target: a pod IP that is IPv6 works for every kind of probe.
func TestIPv6Target(t *testing.T) {
	ln, err := net.Listen("tcp", "[::1]:0")
	if err != nil {
		t.Fatalf("this test needs ::1 on lo: %v", err)
	}
	app := &recorder{}
	srv := &httptest.Server{Listener: ln, Config: &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { app.record(r) })}}
	srv.Start()
	t.Cleanup(srv.Close)
	p := intorstr.FromInt32(port(t, srv.URL))
	base := serve(t, probe.Config{Target: netip.MustParseAddr("::1"), Probers: probe.Probers{
		"/app-health/web/livez":  {HTTPGet: &probe.HTTPGetAction{Path: "/v6", Port: p}},
		"/app-health/web/readyz": {TCPSocket: &probe.TCPSocketAction{Port: p}},
	}})
	for _, path := range []string{"/app-health/web/livez", "/app-health/web/readyz"} {
		if status, body := kubelet(t, base, http.MethodGet, path); status != 200 {
			t.Errorf("%s: %d %q", path, status, body)
		}
	}
	got := app.take()
	if len(got) != 1 || got[0].URI != "/v6" || got[0].Host != "[::1]:"+p.String() {
		t.Fatalf("app saw %+v", got)
	}
}

// TestDial: every connection goes through Config.Dial, to Target only.
func TestDial(t *testing.T) {
	app := &recorder{}
	appSrv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		app.record(r)
		if r.URL.Path == "/hop" {
			http.Redirect(w, r, "/ok", http.StatusFound)
		}
	}))
	t.Cleanup(appSrv.Close)
	p := port(t, appSrv.URL)
	var mu sync.Mutex
	var dialled []string
	base := serve(t, probe.Config{
		Target: loopback,
		Dial: func(ctx context.Context, network, addr string) (net.Conn, error) {
			mu.Lock()
			dialled = append(dialled, network+" "+addr)
			mu.Unlock()
			var d net.Dialer
			return d.DialContext(ctx, network, addr)
		},
		Probers: probe.Probers{
			"/app-health/web/livez":  {HTTPGet: &probe.HTTPGetAction{Path: "/hop", Port: intorstr.FromInt32(p)}},
			"/app-health/web/readyz": {TCPSocket: &probe.TCPSocketAction{Port: intorstr.FromInt32(p)}},
		},
	})
	for _, path := range []string{"/app-health/web/livez", "/app-health/web/readyz"} {
		if status, body := kubelet(t, base, http.MethodGet, path); status != 200 {
			t.Fatalf("%s: %d %q", path, status, body)
		}
	}
	want := slices.Repeat([]string{"tcp 127.0.0.1:" + strconv.Itoa(int(p))}, 3) // two HTTP requests (no keep-alive), one TCP
	mu.Lock()
	defer mu.Unlock()
	if !slices.Equal(dialled, want) {
		t.Fatalf("dialled %q, want %q", dialled, want)
	}
	if got := app.uris(); !slices.Equal(got, []string{"/hop", "/ok"}) {
		t.Fatalf("app saw %q", got)
	}
}

func TestNew(t *testing.T) {
	ok := probe.Probers{"/app-health/web/readyz": {TCPSocket: &probe.TCPSocketAction{Port: intorstr.FromInt(80)}}}
	tests := []struct {
		name string
		cfg  probe.Config
		err  string
	}{
		{"no target", probe.Config{Probers: ok}, "probe: Target is required: the pod's IP"},
		{"unspecified target", probe.Config{Probers: ok, Target: netip.MustParseAddr("0.0.0.0")}, "probe: Target 0.0.0.0 is not a pod IP"},
		{"unspecified v6 target", probe.Config{Probers: ok, Target: netip.MustParseAddr("::")}, "probe: Target :: is not a pod IP"},
		{"multicast target", probe.Config{Probers: ok, Target: netip.MustParseAddr("224.0.0.1")}, "probe: Target 224.0.0.1 is not a pod IP"},
		{"zoned target", probe.Config{Probers: ok, Target: netip.MustParseAddr("fe80::1%eth0")}, "probe: Target fe80::1%eth0 is not a pod IP"},
		{"negative default timeout", probe.Config{Probers: ok, Target: loopback, DefaultTimeout: -time.Second}, "probe: DefaultTimeout -1s is negative"},
		{"invalid prober built by hand", probe.Config{Target: loopback, Probers: probe.Probers{
			"/app-health/web/readyz": {TCPSocket: &probe.TCPSocketAction{Port: intorstr.FromString("http")}},
		}}, `probe: entry "/app-health/web/readyz": tcpSocket.port "http" is a string: named ports must be resolved to numbers by the injector`},
		{"bad path built by hand", probe.Config{Target: loopback, Probers: probe.Probers{"/healthz": ok["/app-health/web/readyz"]}},
			`probe: entry "/healthz": path must be /app-health/<container>/<livez|readyz|startupz>`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h, err := probe.New(tt.cfg)
			if err == nil || err.Error() != tt.err {
				t.Fatalf("New: %v, want %q", err, tt.err)
			}
			if h != nil {
				t.Fatal("a handler with an error")
			}
		})
	}
	// An IPv4-mapped target is the IPv4 address: probes to it work.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	base := serve(t, probe.Config{Target: netip.MustParseAddr("::ffff:127.0.0.1"), Probers: probe.Probers{
		"/app-health/web/readyz": {TCPSocket: &probe.TCPSocketAction{Port: intorstr.FromInt(ln.Addr().(*net.TCPAddr).Port)}},
	}})
	if status, body := kubelet(t, base, http.MethodGet, "/app-health/web/readyz"); status != 200 {
		t.Fatalf("mapped target: %d %q", status, body)
	}
}

// TestNoLeak: probes of every kind leave no goroutine behind.
func TestNoLeak(t *testing.T) {
	appSrv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	t.Cleanup(appSrv.Close)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	healthpb.RegisterHealthServer(srv, health.NewServer())
	done := make(chan struct{})
	go func() { defer close(done); _ = srv.Serve(ln) }()
	t.Cleanup(func() { srv.Stop(); <-done })
	h, err := probe.New(probe.Config{Target: loopback, Probers: probe.Probers{
		"/app-health/a/livez":    {HTTPGet: &probe.HTTPGetAction{Path: "/", Port: intorstr.FromInt32(port(t, appSrv.URL))}},
		"/app-health/a/readyz":   {TCPSocket: &probe.TCPSocketAction{Port: intorstr.FromInt32(port(t, appSrv.URL))}},
		"/app-health/a/startupz": {GRPC: &probe.GRPCAction{Port: int32(ln.Addr().(*net.TCPAddr).Port)}},
	}})
	if err != nil {
		t.Fatal(err)
	}
	probeAll := func() {
		for _, path := range []string{"/app-health/a/livez", "/app-health/a/readyz", "/app-health/a/startupz"} {
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
			if rec.Code != 200 {
				t.Fatalf("%s: %d %q", path, rec.Code, rec.Body)
			}
		}
	}
	probeAll() // the first round starts lazily-created background goroutines of grpc
	before := quiet()
	for range 20 {
		probeAll()
	}
	if after := settle(before); after > before {
		buf := make([]byte, 1<<20)
		t.Fatalf("%d goroutines before, %d after 20 rounds of probes:\n%s", before, after, buf[:runtime.Stack(buf, true)])
	}
}

// quiet returns the number of goroutines once it has not changed for 200ms
// (at most 5s).
func quiet() int {
	n, same := runtime.NumGoroutine(), 0
	for i := 0; i < 100 && same < 4; i++ {
		time.Sleep(50 * time.Millisecond)
		m := runtime.NumGoroutine()
		if m == n {
			same++
		} else {
			n, same = m, 0
		}
	}
	return n
}

// settle waits, at most 5s, for the number of goroutines to drop to want,
// and returns the last count.
func settle(want int) int {
	n := runtime.NumGoroutine()
	for i := 0; i < 100 && n > want; i++ {
		time.Sleep(50 * time.Millisecond)
		n = runtime.NumGoroutine()
	}
	return n
}

// TestH2CProbe: protocol HTTP2 probes over cleartext HTTP/2 with prior
// knowledge, as the kubelet; an app that speaks only h2c is then healthy,
// and an HTTP/1.1 probe of it fails, as does an h2c probe of an HTTP/1.1
// app.
func TestH2CProbe(t *testing.T) {
	// protos records the protocol of each GET an app received (an HTTP/1.1
	// server hands the h2c preface, "PRI * HTTP/2.0", to its handler).
	type protos struct {
		mu  sync.Mutex
		got []string
	}
	start := func(t *testing.T, h2cOnly bool) (int32, *protos) {
		app := &protos{}
		srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.Method != http.MethodGet {
				return
			}
			app.mu.Lock()
			app.got = append(app.got, r.Proto)
			app.mu.Unlock()
		}))
		// Each app speaks one protocol only.
		srv.Config.Protocols = new(http.Protocols)
		if h2cOnly {
			srv.Config.Protocols.SetUnencryptedHTTP2(true)
		} else {
			srv.Config.Protocols.SetHTTP1(true)
		}
		srv.Start()
		t.Cleanup(srv.Close)
		return port(t, srv.URL), app
	}
	h2c, h2cApp := start(t, true)
	h1, h1App := start(t, false)
	str := func(s string) *string { return &s }
	for _, tt := range []struct {
		name     string
		port     int32
		protocol *string
		app      *protos
		status   int
		proto    string // what the app saw; "" when it saw nothing
	}{
		{"HTTP2 to an h2c app", h2c, str(probe.HTTPProtocolHTTP2), h2cApp, 200, "HTTP/2.0"},
		{"HTTP1 to an h2c app", h2c, str(probe.HTTPProtocolHTTP1), h2cApp, 503, ""},
		{"no protocol to an h2c app", h2c, nil, h2cApp, 503, ""},
		{"HTTP2 to an HTTP/1.1 app", h1, str(probe.HTTPProtocolHTTP2), h1App, 503, ""},
		{"HTTP1 to an HTTP/1.1 app", h1, str(probe.HTTPProtocolHTTP1), h1App, 200, "HTTP/1.1"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			base := serve(t, probe.Config{Target: loopback, Probers: probe.Probers{
				"/app-health/api/readyz": {HTTPGet: &probe.HTTPGetAction{Path: "/healthz", Port: intorstr.FromInt32(tt.port), Protocol: tt.protocol}},
			}})
			status, body := kubelet(t, base, http.MethodGet, "/app-health/api/readyz")
			if status != tt.status {
				t.Fatalf("status %d (%q), want %d", status, body, tt.status)
			}
			tt.app.mu.Lock()
			got := tt.app.got
			tt.app.got = nil
			tt.app.mu.Unlock()
			if want := []string{tt.proto}; tt.proto != "" && !slices.Equal(got, want) || tt.proto == "" && len(got) != 0 {
				t.Fatalf("the app saw %q, want %q", got, tt.proto)
			}
		})
	}
}

// TestGRPCProbeTLS: mode TLS probes over TLS without verifying the app's
// certificate (a throwaway CA's), as the kubelet; plaintext probes of a
// TLS server fail, as does a TLS probe of a plaintext one.
func TestGRPCProbeTLS(t *testing.T) {
	start := func(t *testing.T, tlsOn bool) int32 {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		var opts []grpc.ServerOption
		if tlsOn {
			_, cert := testpki.ServingCert(t, net.ParseIP("127.0.0.1"))
			opts = append(opts, grpc.Creds(credentials.NewServerTLSFromCert(&cert)))
		}
		srv := grpc.NewServer(opts...)
		hs := health.NewServer()
		hs.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
		healthpb.RegisterHealthServer(srv, hs)
		done := make(chan struct{})
		go func() { defer close(done); _ = srv.Serve(ln) }()
		t.Cleanup(func() { srv.Stop(); <-done })
		return int32(ln.Addr().(*net.TCPAddr).Port)
	}
	withTLS, plain := start(t, true), start(t, false)
	str := func(s string) *string { return &s }
	for _, tt := range []struct {
		name   string
		port   int32
		mode   *string
		status int
	}{
		{"TLS to a TLS server", withTLS, str(probe.GRPCProbeModeTLS), 200},
		{"Plaintext to a TLS server", withTLS, str(probe.GRPCProbeModePlaintext), 503},
		{"no mode to a TLS server", withTLS, nil, 503},
		{"TLS to a plaintext server", plain, str(probe.GRPCProbeModeTLS), 503},
		{"Plaintext to a plaintext server", plain, str(probe.GRPCProbeModePlaintext), 200},
	} {
		t.Run(tt.name, func(t *testing.T) {
			base := serve(t, probe.Config{Target: loopback, Probers: probe.Probers{
				"/app-health/api/readyz": {GRPC: &probe.GRPCAction{Port: tt.port, Mode: tt.mode}},
			}})
			if status, body := kubelet(t, base, http.MethodGet, "/app-health/api/readyz"); status != tt.status {
				t.Fatalf("status %d (%q), want %d", status, body, tt.status)
			}
		})
	}
}
