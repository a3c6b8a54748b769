package node

import (
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

func port(t *testing.T, addr string) int32 {
	t.Helper()
	_, p, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatal(err)
	}
	n, err := strconv.Atoi(p)
	if err != nil {
		t.Fatal(err)
	}
	return int32(n)
}

// TestRunProbe: HTTP, HTTPS, TCP and gRPC probes against real listeners on
// loopback succeed and fail as the kubelet's do.
func TestRunProbe(t *testing.T) {
	mux := http.NewServeMux()
	mux.HandleFunc("/ok", func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("User-Agent") != probeUserAgent {
			http.Error(w, "wrong user agent", http.StatusBadRequest)
		}
	})
	mux.HandleFunc("/fail", func(w http.ResponseWriter, r *http.Request) { http.Error(w, "no", http.StatusServiceUnavailable) })
	mux.HandleFunc("/redirect", func(w http.ResponseWriter, r *http.Request) { http.Redirect(w, r, "/ok", http.StatusFound) })
	mux.HandleFunc("/header", func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("X-Probe") != "yes" || r.Host != "app.example" {
			http.Error(w, "headers missing", http.StatusBadRequest)
		}
	})
	mux.HandleFunc("/slow", func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-time.After(3 * time.Second):
		case <-r.Context().Done():
		}
	})
	plain := httptest.NewServer(mux)
	defer plain.Close()
	tlsSrv := httptest.NewTLSServer(mux)
	defer tlsSrv.Close()
	httpPort, httpsPort := port(t, plain.Listener.Addr().String()), port(t, tlsSrv.Listener.Addr().String())

	// A port nothing listens on.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closedPort := port(t, ln.Addr().String())
	ln.Close()

	gln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer()
	hs := health.NewServer()
	hs.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	hs.SetServingStatus("ready", healthpb.HealthCheckResponse_SERVING)
	hs.SetServingStatus("draining", healthpb.HealthCheckResponse_NOT_SERVING)
	healthpb.RegisterHealthServer(gs, hs)
	go gs.Serve(gln) //nolint:errcheck // ends with Stop
	defer gs.Stop()
	grpcPort := port(t, gln.Addr().String())

	ctr := corev1.Container{Name: "app", Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: httpPort}, {Name: "grpc", ContainerPort: grpcPort}}}
	get := func(path string, p intstr.IntOrString) *corev1.Probe {
		return &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: path, Port: p}}}
	}
	svc := func(s string) *string { return &s }
	for _, tc := range []struct {
		name  string
		probe *corev1.Probe
		err   string // "" for success
	}{
		{"http 200", get("/ok", intstr.FromInt32(httpPort)), ""},
		{"http named port", get("/ok", intstr.FromString("http")), ""},
		{"http 503", get("/fail", intstr.FromInt32(httpPort)), "status 503"},
		{"http 404", get("/nothing", intstr.FromInt32(httpPort)), "status 404"},
		{"http redirect followed", get("/redirect", intstr.FromInt32(httpPort)), ""},
		{"http headers and Host", &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/header", Port: intstr.FromInt32(httpPort),
			HTTPHeaders: []corev1.HTTPHeader{{Name: "X-Probe", Value: "yes"}, {Name: "Host", Value: "app.example"}}}}}, ""},
		{"http nothing listening", get("/ok", intstr.FromInt32(closedPort)), "connection refused"},
		{"http timeout", &corev1.Probe{TimeoutSeconds: 1, ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/slow", Port: intstr.FromInt32(httpPort)}}}, "deadline exceeded"},
		{"http unknown named port", get("/ok", intstr.FromString("admin")), `probe port "admin" is not a port of container app`},
		{"http port out of range", get("/ok", intstr.FromInt32(70000)), "out of range"},
		{"https not verified", &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/ok", Port: intstr.FromInt32(httpsPort), Scheme: corev1.URISchemeHTTPS}}}, ""},
		{"http to an https port", get("/ok", intstr.FromInt32(httpsPort)), "status 400"},
		{"tcp open", &corev1.Probe{ProbeHandler: corev1.ProbeHandler{TCPSocket: &corev1.TCPSocketAction{Port: intstr.FromInt32(httpPort)}}}, ""},
		{"tcp named port", &corev1.Probe{ProbeHandler: corev1.ProbeHandler{TCPSocket: &corev1.TCPSocketAction{Port: intstr.FromString("grpc")}}}, ""},
		{"tcp closed", &corev1.Probe{ProbeHandler: corev1.ProbeHandler{TCPSocket: &corev1.TCPSocketAction{Port: intstr.FromInt32(closedPort)}}}, "connection refused"},
		{"grpc serving", &corev1.Probe{ProbeHandler: corev1.ProbeHandler{GRPC: &corev1.GRPCAction{Port: grpcPort}}}, ""},
		{"grpc service serving", &corev1.Probe{ProbeHandler: corev1.ProbeHandler{GRPC: &corev1.GRPCAction{Port: grpcPort, Service: svc("ready")}}}, ""},
		{"grpc service not serving", &corev1.Probe{ProbeHandler: corev1.ProbeHandler{GRPC: &corev1.GRPCAction{Port: grpcPort, Service: svc("draining")}}}, "status NOT_SERVING"},
		{"grpc unknown service", &corev1.Probe{ProbeHandler: corev1.ProbeHandler{GRPC: &corev1.GRPCAction{Port: grpcPort, Service: svc("nope")}}}, "NotFound"},
		{"grpc against HTTP/1", &corev1.Probe{TimeoutSeconds: 1, ProbeHandler: corev1.ProbeHandler{GRPC: &corev1.GRPCAction{Port: httpPort}}}, "node: grpc probe"},
		{"grpc closed", &corev1.Probe{TimeoutSeconds: 1, ProbeHandler: corev1.ProbeHandler{GRPC: &corev1.GRPCAction{Port: closedPort}}}, "node: grpc probe"},
		{"grpc port 0", &corev1.Probe{ProbeHandler: corev1.ProbeHandler{GRPC: &corev1.GRPCAction{Port: 0}}}, "out of range"},
		{"no handler", &corev1.Probe{}, "probe has no handler"},
		{"exec is not from the node", &corev1.Probe{ProbeHandler: corev1.ProbeHandler{Exec: &corev1.ExecAction{Command: []string{"true"}}}}, "an exec probe runs in its container"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			start := time.Now()
			err := runProbe(context.Background(), "127.0.0.1", ctr, tc.probe)
			if tc.err == "" && err != nil {
				t.Fatalf("runProbe = %v, want success", err)
			}
			if tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)) {
				t.Fatalf("runProbe = %v, want an error containing %q", err, tc.err)
			}
			if el := time.Since(start); el > 2500*time.Millisecond {
				t.Fatalf("runProbe took %s, past its 1 s timeout", el)
			}
		})
	}
}

// TestProber: verdicts follow the thresholds and the schedule follows the
// period (readiness retried every eagerPeriod until it first passes).
func TestProber(t *testing.T) {
	t0 := time.Unix(1000, 0)
	for _, tc := range []struct {
		name    string
		probe   corev1.Probe
		initial bool
		eager   bool
		results []bool
		verdict []bool          // after each result
		gaps    []time.Duration // next - now after each result
		failed  bool            // after the last
	}{
		{name: "readiness defaults", probe: corev1.Probe{}, eager: true,
			results: []bool{false, true, false, false, false, true},
			verdict: []bool{false, true, true, true, false, true},
			gaps:    []time.Duration{eagerPeriod, 10 * time.Second, 10 * time.Second, 10 * time.Second, 10 * time.Second, 10 * time.Second}},
		{name: "success threshold 2", probe: corev1.Probe{SuccessThreshold: 2, PeriodSeconds: 1},
			results: []bool{true, false, true, true},
			verdict: []bool{false, false, false, true},
			gaps:    []time.Duration{time.Second, time.Second, time.Second, time.Second}},
		{name: "liveness fails after 2", probe: corev1.Probe{FailureThreshold: 2, PeriodSeconds: 3}, initial: true,
			results: []bool{false, true, false, false},
			verdict: []bool{true, true, true, false},
			gaps:    []time.Duration{3 * time.Second, 3 * time.Second, 3 * time.Second, 3 * time.Second}, failed: true},
		{name: "startup not failed yet", probe: corev1.Probe{FailureThreshold: 3, PeriodSeconds: 1},
			results: []bool{false, false},
			verdict: []bool{false, false},
			gaps:    []time.Duration{time.Second, time.Second}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := newProber(&tc.probe, t0, tc.initial, tc.eager)
			if !p.due(t0) {
				t.Fatal("not due at start")
			}
			now := t0
			for i, ok := range tc.results {
				p.record(ok, now)
				if p.ok != tc.verdict[i] {
					t.Fatalf("after result %d (%v): verdict %v, want %v", i, ok, p.ok, tc.verdict[i])
				}
				if gap := p.next.Sub(now); gap != tc.gaps[i] {
					t.Fatalf("after result %d: next in %s, want %s", i, gap, tc.gaps[i])
				}
				if p.due(now) {
					t.Fatalf("due again right after result %d", i)
				}
				now = p.next
			}
			if p.failed() != tc.failed {
				t.Fatalf("failed() = %v, want %v", p.failed(), tc.failed)
			}
		})
	}
	delayed := newProber(&corev1.Probe{InitialDelaySeconds: 5}, t0, false, false)
	if delayed.due(t0.Add(4*time.Second)) || !delayed.due(t0.Add(5*time.Second)) {
		t.Fatal("initialDelaySeconds not honoured")
	}
}
