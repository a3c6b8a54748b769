package client_test

import (
	"context"
	"log/slog"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/resolver"
	"google.golang.org/grpc/resolver/manual"
	"google.golang.org/grpc/status"

	controlplanev1 "github.com/mesh-dev/mesh/controlplane/api/v1"
	"github.com/mesh-dev/mesh/controlplane/client"
)

// The test's pod and trust domain.
const (
	namespace = "shop"
	podName   = "web-7d4f9"
)

var (
	td    = spiffeid.RequireTrustDomainFromString("cluster.local")
	quiet = slog.New(slog.DiscardHandler)
)

// wait bounds every wait for something the client or server should do
// promptly; a test that hits it has failed.
const wait = 5 * time.Second

// stream is one watch stream the fake controller has open: the test sends
// on it, message by message, or ends it.
type stream[T any] struct {
	req  *controlplanev1.WatchRequest
	send chan *T
	end  chan error
	done chan struct{} // closed when the handler returned
}

// push sends m on the stream; it returns once the handler took it.
func (s *stream[T]) push(t *testing.T, m *T) {
	t.Helper()
	select {
	case s.send <- m:
	case <-s.done:
		t.Fatal("push: the stream has ended")
	case <-time.After(wait):
		t.Fatal("push: the stream's handler did not take the message")
	}
}

// fakeCP is a scripted controller: every watch stream opened is handed to
// the test, which decides what it sends. Its behaviour is the API's
// contract only as far as each test scripts it; the real server is tested
// in its own package.
type fakeCP struct {
	controlplanev1.UnimplementedControlPlaneServer
	policies chan *stream[controlplanev1.Policy]
	dests    chan *stream[controlplanev1.Destinations]
	bundles  chan *stream[controlplanev1.TrustBundle]
	acks     chan *controlplanev1.PolicyAck
	// refuse, when set, fails every watch at once with it.
	refuse   error
	attempts atomic.Int64 // watch calls, refused or not
	// onAck, when set, runs in AckPolicy before it answers.
	onAck func(*controlplanev1.PolicyAck)
	// failAcks: so many AckPolicy calls fail (Unavailable) before they
	// succeed again.
	failAcks atomic.Int64
}

func newFakeCP() *fakeCP {
	return &fakeCP{
		policies: make(chan *stream[controlplanev1.Policy], 16),
		dests:    make(chan *stream[controlplanev1.Destinations], 16),
		bundles:  make(chan *stream[controlplanev1.TrustBundle], 16),
		acks:     make(chan *controlplanev1.PolicyAck, 64),
	}
}

func (s *fakeCP) WatchPolicy(req *controlplanev1.WatchRequest, ss grpc.ServerStreamingServer[controlplanev1.Policy]) error {
	return serveWatch(s, req, ss, s.policies)
}

func (s *fakeCP) WatchDestinations(req *controlplanev1.WatchRequest, ss grpc.ServerStreamingServer[controlplanev1.Destinations]) error {
	return serveWatch(s, req, ss, s.dests)
}

func (s *fakeCP) WatchTrustBundle(req *controlplanev1.WatchRequest, ss grpc.ServerStreamingServer[controlplanev1.TrustBundle]) error {
	return serveWatch(s, req, ss, s.bundles)
}

func (s *fakeCP) AckPolicy(_ context.Context, ack *controlplanev1.PolicyAck) (*controlplanev1.PolicyAckResponse, error) {
	if s.failAcks.Add(-1) >= 0 {
		return nil, status.Error(codes.Unavailable, "ack lost")
	}
	if s.onAck != nil {
		s.onAck(ack)
	}
	select {
	case s.acks <- ack:
	default:
		// The test reads acks; 64 unread means it stopped caring.
	}
	return &controlplanev1.PolicyAckResponse{}, nil
}

func serveWatch[T any](s *fakeCP, req *controlplanev1.WatchRequest, ss grpc.ServerStreamingServer[T], streams chan *stream[T]) error {
	s.attempts.Add(1)
	if s.refuse != nil {
		return s.refuse
	}
	st := &stream[T]{req: req, send: make(chan *T), end: make(chan error), done: make(chan struct{})}
	defer close(st.done)
	ctx := ss.Context()
	select {
	case streams <- st:
	case <-ctx.Done():
		return nil
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case err := <-st.end:
			return err
		case m := <-st.send:
			if err := ss.Send(m); err != nil {
				return err
			}
		}
	}
}

// next is the next stream the client opens on ch.
func next[T any](t *testing.T, ch chan *stream[T]) *stream[T] {
	t.Helper()
	select {
	case st := <-ch:
		if st.req.GetNamespace() != namespace || st.req.GetPod() != podName {
			t.Fatalf("the watch request names %s/%s, want %s/%s", st.req.GetNamespace(), st.req.GetPod(), namespace, podName)
		}
		return st
	case <-time.After(wait):
		t.Fatal("the client opened no stream")
		return nil
	}
}

// serve runs srv on a loopback port; stop ends it (as a crashed replica:
// every connection closed) and is idempotent.
func serve(t testing.TB, srv *fakeCP) (addr string, stop func()) {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer()
	controlplanev1.RegisterControlPlaneServer(gs, srv)
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = gs.Serve(lis)
	}()
	stop = sync.OnceFunc(func() {
		gs.Stop()
		<-done
	})
	t.Cleanup(stop)
	return lis.Addr().String(), stop
}

// dial connects to the controller replicas at addrs, as the proxy does
// through a Service: one target resolving to all of them.
func dial(t testing.TB, addrs ...string) *grpc.ClientConn {
	t.Helper()
	r := manual.NewBuilderWithScheme("controller")
	var state resolver.State
	for _, a := range addrs {
		state.Addresses = append(state.Addresses, resolver.Address{Addr: a})
	}
	r.InitialState(state)
	conn, err := grpc.NewClient("controller:///mesh-controller", grpc.WithTransportCredentials(insecure.NewCredentials()), grpc.WithResolvers(r))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// config is a client configuration for conn with fast back-off; tests set
// what they watch.
func config(conn grpc.ClientConnInterface) client.Config {
	return client.Config{
		Conn: conn, Namespace: namespace, Pod: podName, TrustDomain: td,
		MinBackoff: 5 * time.Millisecond, MaxBackoff: 50 * time.Millisecond,
		Logger: quiet,
	}
}

// start makes a client and runs it until the test ends, checking that Run
// then returns nil promptly.
func start(t *testing.T, cfg client.Config) *client.Client {
	t.Helper()
	c, err := client.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(wait):
			t.Error("Run did not return after its context ended")
		}
	})
	return c
}

// waitFor polls cond until it holds, failing the test after wait.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(wait)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// metric reads one sample from reg: the metric called name with exactly
// the labels given (name=value pairs); 0 if there is none.
func metric(t *testing.T, reg *prometheus.Registry, name string, labels ...string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			if len(m.GetLabel()) != len(labels)/2 {
				continue
			}
			have := map[string]string{}
			for _, l := range m.GetLabel() {
				have[l.GetName()] = l.GetValue()
			}
			match := true
			for i := 0; i+1 < len(labels); i += 2 {
				if v, ok := have[labels[i]]; !ok || v != labels[i+1] {
					match = false
				}
			}
			if match {
				switch {
				case m.Counter != nil:
					return m.GetCounter().GetValue()
				case m.Gauge != nil:
					return m.GetGauge().GetValue()
				}
			}
		}
	}
	return 0
}

// recorder keeps every log record, for tests of what is logged at which
// level.
type recorder struct {
	mu   sync.Mutex
	recs []slog.Record
}

func (r *recorder) Enabled(context.Context, slog.Level) bool { return true }
func (r *recorder) Handle(_ context.Context, rec slog.Record) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.recs = append(r.recs, rec.Clone())
	return nil
}
func (r *recorder) WithAttrs([]slog.Attr) slog.Handler { return r }
func (r *recorder) WithGroup(string) slog.Handler      { return r }

// find returns the first record whose message contains msg and whose
// attribute key has the value want.
func (r *recorder) find(msg, key, want string) (slog.Record, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, rec := range r.recs {
		if !strings.Contains(rec.Message, msg) {
			continue
		}
		found := false
		rec.Attrs(func(a slog.Attr) bool {
			if a.Key == key && a.Value.String() == want {
				found = true
				return false
			}
			return true
		})
		if found {
			return rec, true
		}
	}
	return slog.Record{}, false
}
