package identity_test

import (
	"context"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"golang.org/x/time/rate"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"
	"k8s.io/client-go/kubernetes"

	"github.com/mesh-dev/mesh/identity"
	identityv1 "github.com/mesh-dev/mesh/identity/api/v1"
)

// reviewWatch sees every TokenReview the service sends to the real API
// server, from inside the clientset's transport, and can hold them there
// to make reviews slow.
type reviewWatch struct {
	mu                          sync.Mutex
	sent, inFlight, maxInFlight int
	hold                        chan struct{} // reviews wait while it is open; nil: no hold
}

func (w *reviewWatch) enter() chan struct{} {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.sent++
	w.inFlight++
	w.maxInFlight = max(w.maxInFlight, w.inFlight)
	return w.hold
}

func (w *reviewWatch) leave() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.inFlight--
}

// counts returns sent, in flight and the most in flight at once so far.
func (w *reviewWatch) counts() (sent, inFlight, maxInFlight int) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.sent, w.inFlight, w.maxInFlight
}

type reviewTransport struct {
	next http.RoundTripper
	w    *reviewWatch
}

func (rt reviewTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	if r.Method != http.MethodPost || !strings.HasSuffix(r.URL.Path, "/tokenreviews") {
		return rt.next.RoundTrip(r)
	}
	hold := rt.w.enter()
	defer rt.w.leave()
	if hold != nil {
		select {
		case <-hold:
		case <-r.Context().Done():
			return nil, r.Context().Err()
		}
	}
	return rt.next.RoundTrip(r)
}

// watchedClient is the cluster's real clientset with w in its transport.
func (e *env) watchedClient(t *testing.T, w *reviewWatch) kubernetes.Interface {
	t.Helper()
	cfg := e.c.RESTConfig()
	cfg.WrapTransport = func(rt http.RoundTripper) http.RoundTripper { return reviewTransport{next: rt, w: w} }
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return cs
}

// serve runs srv as the controller does (ServerOptions, TLS with the
// controller's SVID) on loopback, IPv4 and IPv6, until the test ends. It
// returns the listening addresses by family.
func (e *env) serve(t *testing.T, srv *identity.Server) (v4, v6 string) {
	t.Helper()
	opts, err := identity.ServerOptions(identity.TransportConfig{})
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer(append(opts, grpc.Creds(credentials.NewTLS(tlsconfig.TLSServerConfig(e.self))))...)
	srv.Register(gs)
	var wg sync.WaitGroup
	var addrs []string
	for _, a := range []string{"127.0.0.1:0", "[::1]:0"} {
		lis, err := net.Listen("tcp", a)
		if err != nil {
			t.Fatalf("listen on loopback %s: %v", a, err)
		}
		addrs = append(addrs, lis.Addr().String())
		wg.Go(func() { _ = gs.Serve(lis) })
	}
	t.Cleanup(func() { gs.Stop(); wg.Wait() })
	return addrs[0], addrs[1]
}

// clientFrom connects to target from the loopback address src.
func (e *env) clientFrom(t *testing.T, target, src string) identityv1.IdentityClient {
	t.Helper()
	dial := func(ctx context.Context, addr string) (net.Conn, error) {
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}}
		return d.DialContext(ctx, "tcp", addr)
	}
	conn, err := grpc.NewClient("passthrough:///"+target, e.clientCreds(), grpc.WithContextDialer(dial))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return identityv1.NewIdentityClient(conn)
}

// refusedCount reads mesh_identity_requests_refused_total{reason}.
func refusedCount(reg *prometheus.Registry, reason string) float64 {
	return metricValue(reg, "mesh_identity_requests_refused_total", "reason", reason)
}

// metricValue reads a counter or gauge from reg; label "" for one without
// labels.
func metricValue(reg *prometheus.Registry, name, label, value string) float64 {
	mfs, _ := reg.Gather()
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			match := label == ""
			for _, l := range m.GetLabel() {
				match = match || (l.GetName() == label && l.GetValue() == value)
			}
			if !match {
				continue
			}
			if m.GetGauge() != nil {
				return m.GetGauge().GetValue()
			}
			return m.GetCounter().GetValue()
		}
	}
	return 0
}

// TestSourceLimit: calls from one address past its burst are refused with
// ResourceExhausted before any TokenReview is sent (counted inside the
// real clientset's transport), while other addresses, IPv4 and IPv6, are
// still served; addresses past the tracking cap share one bucket.
func TestSourceLimit(t *testing.T) {
	e := setup(t)
	web := e.pod(t, "web-source", "web")
	good := e.token(t, web, identity.DefaultAudience, true)
	validCSR := csr(t, p256(t))
	const bad = "not-a-token"
	type step struct {
		from       string // the client's loopback address
		token      string
		csr        []byte // nil: a valid CSR
		n          int
		wantPassed int        // calls let through the source limit, the first ones
		wantCode   codes.Code // what those get
	}
	tests := []struct {
		name              string
		burst, maxSources int
		steps             []step
		wantReviews       int
		wantRefused       map[string]float64
	}{
		{
			name: "a bad-token spray stops at the burst; other addresses are served", burst: 5, maxSources: 100,
			steps: []step{
				{from: "127.0.0.1", token: bad, n: 25, wantPassed: 5, wantCode: codes.Unauthenticated},
				{from: "127.0.0.2", token: good, n: 1, wantPassed: 1, wantCode: codes.OK},
				{from: "::1", token: good, n: 1, wantPassed: 1, wantCode: codes.OK},
				{from: "127.0.0.1", token: good, n: 3, wantPassed: 0},
			},
			wantReviews: 7,
			wantRefused: map[string]float64{"rate_limited_source": 23},
		},
		{
			name: "the limit comes before the CSR is parsed", burst: 2, maxSources: 100,
			steps: []step{
				{from: "127.0.0.1", token: good, csr: []byte("garbage"), n: 6, wantPassed: 2, wantCode: codes.InvalidArgument},
			},
			wantRefused: map[string]float64{"rate_limited_source": 4},
		},
		{
			name: "addresses past the tracking cap share one bucket", burst: 3, maxSources: 1,
			steps: []step{
				{from: "127.0.0.1", token: good, n: 1, wantPassed: 1, wantCode: codes.OK},
				{from: "127.0.0.2", token: bad, n: 2, wantPassed: 2, wantCode: codes.Unauthenticated},
				{from: "127.0.0.3", token: bad, n: 3, wantPassed: 1, wantCode: codes.Unauthenticated},
				{from: "::1", token: good, n: 1, wantPassed: 0},
				// The tracked address keeps its own bucket.
				{from: "127.0.0.1", token: good, n: 1, wantPassed: 1, wantCode: codes.OK},
			},
			wantReviews: 5,
			wantRefused: map[string]float64{"rate_limited_overflow": 3},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w := &reviewWatch{}
			reg := prometheus.NewRegistry()
			srv, err := identity.NewServer(identity.ServerConfig{
				CA: e.ca, Kube: e.watchedClient(t, w), Audit: quiet, Registerer: reg,
				RatePerPod: rate.Inf,
				// No refill during the test: exactly the burst gets through.
				RatePerSource: rate.Every(time.Hour), BurstPerSource: tt.burst, MaxSources: tt.maxSources,
			})
			if err != nil {
				t.Fatal(err)
			}
			v4, v6 := e.serve(t, srv)
			for i, st := range tt.steps {
				target := v4
				if strings.Contains(st.from, ":") {
					target = v6
				}
				client := e.clientFrom(t, target, st.from)
				req := &identityv1.CertifyRequest{Csr: st.csr, Token: st.token}
				if req.Csr == nil {
					req.Csr = validCSR
				}
				for j := range st.n {
					_, err := client.Certify(t.Context(), req)
					if j < st.wantPassed {
						if status.Code(err) != st.wantCode {
							t.Fatalf("step %d call %d from %s: %v, want %v", i, j, st.from, err, st.wantCode)
						}
						continue
					}
					if status.Code(err) != codes.ResourceExhausted || !strings.Contains(status.Convert(err).Message(), "identity: too many requests from "+st.from) {
						t.Fatalf("step %d call %d from %s: %v, want ResourceExhausted naming the source", i, j, st.from, err)
					}
				}
			}
			if sent, _, _ := w.counts(); sent != tt.wantReviews {
				t.Errorf("%d TokenReviews reached the API server, want %d", sent, tt.wantReviews)
			}
			if got := metricValue(reg, "mesh_identity_token_reviews_total", "", ""); got != float64(tt.wantReviews) {
				t.Errorf("mesh_identity_token_reviews_total = %v, want %d", got, tt.wantReviews)
			}
			for _, reason := range []string{"rate_limited_source", "rate_limited_overflow", "review_capacity", "rate_limited_pod"} {
				if got := refusedCount(reg, reason); got != tt.wantRefused[reason] {
					t.Errorf("refused{%s} = %v, want %v", reason, got, tt.wantRefused[reason])
				}
			}
		})
	}
}

// TestThrottledAudit: a spray that trips the source limit writes a
// bounded number of audit events, and the ones left out are counted in
// the next event written, so every refusal is accounted for.
func TestThrottledAudit(t *testing.T) {
	e := setup(t)
	audit := &syncBuffer{}
	srv, err := identity.NewServer(identity.ServerConfig{
		CA: e.ca, Kube: e.cs, Audit: slog.New(slog.NewJSONHandler(audit, nil)),
		RatePerSource: rate.Every(time.Hour), BurstPerSource: 1,
	})
	if err != nil {
		t.Fatal(err)
	}
	v4, _ := e.serve(t, srv)
	client := e.clientFrom(t, v4, "127.0.0.1")
	req := &identityv1.CertifyRequest{Csr: csr(t, p256(t)), Token: "not-a-token"}
	refused := 0
	call := func() {
		_, err := client.Certify(t.Context(), req)
		if status.Code(err) == codes.ResourceExhausted {
			refused++
		}
	}
	start := time.Now()
	for range 60 {
		call()
	}
	spray := time.Since(start)
	throttled := func() (events, suppressed int) {
		for _, ev := range audit.events(t) {
			if ev["code"] == codes.ResourceExhausted.String() {
				events++
				if n, ok := ev["suppressed"].(float64); ok {
					suppressed += int(n)
				}
			}
		}
		return events, suppressed
	}
	// The audit allowance is a burst of 10 and one a second.
	if events, _ := throttled(); events < 10 || events > 11+int(spray.Seconds()) {
		t.Fatalf("%d audit events for %d throttled calls in %v, want 10 to %d", events, refused, spray, 11+int(spray.Seconds()))
	}
	// The next event written carries the count of those left out.
	for range 40 {
		if _, suppressed := throttled(); suppressed > 0 {
			break
		}
		time.Sleep(100 * time.Millisecond)
		call()
	}
	events, suppressed := throttled()
	if suppressed == 0 || events+suppressed != refused {
		t.Fatalf("%d events + %d suppressed, want the %d throttled calls", events, suppressed, refused)
	}
}

// TestReviewConcurrency: with reviews held at the API server's door, no
// more than MaxConcurrentReviews are ever in flight (seen by the
// transport and by the gauge), and a call that finds no slot within
// ReviewWait is refused with ResourceExhausted without a review.
func TestReviewConcurrency(t *testing.T) {
	e := setup(t)
	tests := []struct {
		name        string
		cap         int
		wait        time.Duration
		callers     int
		wantCodes   map[codes.Code]int
		wantRefused int
	}{
		{
			name: "slow reviews queue for the slots", cap: 2, wait: time.Minute, callers: 6,
			wantCodes: map[codes.Code]int{codes.Unauthenticated: 6},
		},
		{
			name: "no slot within the wait", cap: 1, wait: 200 * time.Millisecond, callers: 3,
			wantCodes:   map[codes.Code]int{codes.Unauthenticated: 1, codes.ResourceExhausted: 2},
			wantRefused: 2,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w := &reviewWatch{hold: make(chan struct{})}
			reg := prometheus.NewRegistry()
			srv, err := identity.NewServer(identity.ServerConfig{
				CA: e.ca, Kube: e.watchedClient(t, w), Audit: quiet, Registerer: reg,
				RatePerSource: rate.Inf, MaxConcurrentReviews: tt.cap, ReviewWait: tt.wait,
			})
			if err != nil {
				t.Fatal(err)
			}
			gauge := func() float64 { return metricValue(reg, "mesh_identity_token_reviews_in_flight", "", "") }
			req := &identityv1.CertifyRequest{Csr: csr(t, p256(t)), Token: "not-a-token"}

			var (
				wg   sync.WaitGroup
				mu   sync.Mutex
				got  = map[codes.Code]int{}
				done int
			)
			for range tt.callers {
				wg.Go(func() {
					_, err := srv.Certify(t.Context(), req)
					mu.Lock()
					defer mu.Unlock()
					got[status.Code(err)]++
					done++
				})
			}
			finished := func() int { mu.Lock(); defer mu.Unlock(); return done }
			// Wait, bounded, for the slots to fill and the refusals to come.
			for i := 0; i < 200; i++ {
				if _, in, _ := w.counts(); in == tt.cap && finished() == tt.wantRefused {
					break
				}
				time.Sleep(25 * time.Millisecond)
			}
			// Hold a while longer: nothing more may get in.
			for range 10 {
				if _, in, _ := w.counts(); in != tt.cap {
					t.Errorf("%d reviews in flight at the API server while held, want the cap %d", in, tt.cap)
				}
				if g := gauge(); g != float64(tt.cap) {
					t.Errorf("in-flight gauge = %v while held, want the cap %d", g, tt.cap)
				}
				time.Sleep(20 * time.Millisecond)
			}
			close(w.hold)
			wg.Wait()

			sent, _, maxIn := w.counts()
			if maxIn != tt.cap {
				t.Errorf("at most %d reviews were in flight, want the cap %d", maxIn, tt.cap)
			}
			if want := tt.callers - tt.wantRefused; sent != want {
				t.Errorf("%d reviews sent, want %d", sent, want)
			}
			for c, n := range tt.wantCodes {
				if got[c] != n {
					t.Errorf("%d calls got %v, want %d (all: %v)", got[c], c, n, got)
				}
			}
			if g := gauge(); g != 0 {
				t.Errorf("in-flight gauge = %v after every call ended", g)
			}
			if got := refusedCount(reg, "review_capacity"); got != float64(tt.wantRefused) {
				t.Errorf("refused{review_capacity} = %v, want %d", got, tt.wantRefused)
			}
		})
	}
}
