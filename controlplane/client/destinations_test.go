package client_test

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"reflect"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	controlplanev1 "github.com/mesh-dev/mesh/controlplane/api/v1"
	"github.com/mesh-dev/mesh/controlplane/client"
)

var (
	webID = spiffeid.RequireFromString("spiffe://cluster.local/ns/shop/sa/web")
	apiID = spiffeid.RequireFromString("spiffe://cluster.local/ns/shop/sa/api")
	dbID  = spiffeid.RequireFromString("spiffe://cluster.local/ns/data/sa/db")
)

func pod(addr string, meshed bool, id string) *controlplanev1.Destination {
	return &controlplanev1.Destination{Address: addr, Kind: controlplanev1.Destination_POD, Meshed: meshed, Identity: id}
}

func svc(addr string, eps ...*controlplanev1.Endpoint) *controlplanev1.Destination {
	return &controlplanev1.Destination{Address: addr, Kind: controlplanev1.Destination_SERVICE, Endpoints: eps}
}

func ep(addr string, meshed bool, id string) *controlplanev1.Endpoint {
	return &controlplanev1.Endpoint{Address: addr, Meshed: meshed, Identity: id}
}

func snapshot(ds ...*controlplanev1.Destination) *controlplanev1.Destinations {
	return &controlplanev1.Destinations{Snapshot: true, Upserts: ds}
}

// destinationsClient runs a client watching destinations only, on a fresh
// fake controller, and returns them with the client's first stream.
func destinationsClient(t *testing.T, reg prometheus.Registerer) (*client.Client, *fakeCP, *stream[controlplanev1.Destinations]) {
	t.Helper()
	srv := newFakeCP()
	addr, _ := serve(t, srv)
	cfg := config(dial(t, addr))
	cfg.Destinations = true
	cfg.Registerer = reg
	c := start(t, cfg)
	return c, srv, next(t, srv.dests)
}

// apply pushes m on st and waits until the client applied it.
func apply(t *testing.T, c *client.Client, st *stream[controlplanev1.Destinations], m *controlplanev1.Destinations) {
	t.Helper()
	updated := c.Updated()
	st.push(t, m)
	select {
	case <-updated:
	case <-time.After(wait):
		t.Fatal("the client did not apply the message")
	}
	select {
	case <-c.Updated():
		t.Fatal("Updated returned a closed channel after the change")
	default:
	}
}

func lookup(t *testing.T, c *client.Client, addr string) (client.Destination, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	return c.Lookup(ctx, netip.MustParseAddrPort(addr))
}

// same compares destinations, taking no endpoints and an empty list as
// equal.
func same(a, b client.Destination) bool {
	if len(a.Endpoints) == 0 && len(b.Endpoints) == 0 {
		a.Endpoints, b.Endpoints = nil, nil
	}
	return reflect.DeepEqual(a, b)
}

func endpoint(addr string, id spiffeid.ID) client.Endpoint {
	return client.Endpoint{Addr: netip.MustParseAddrPort(addr), Meshed: !id.IsZero(), Identity: id}
}

// TestLookup: what Lookup answers for each kind of entry of a snapshot,
// including what a careless or hostile controller could send.
func TestLookup(t *testing.T) {
	reg := prometheus.NewRegistry()
	c, _, st := destinationsClient(t, reg)
	apply(t, c, st, snapshot(
		svc("198.18.1.1:80",
			ep("198.18.2.1:8080", true, webID.String()),
			ep("198.18.2.2:8080", false, "not even an ID: ignored, unmeshed"),
			ep("garbage", true, webID.String()),
			ep("198.18.2.3:8080", true, "spiffe://other.example/ns/shop/sa/web"),
			ep("198.18.2.5:8080", true, ""),
			ep("198.18.2.6:0", false, ""),
			ep("[::ffff:198.18.2.4]:8080", true, apiID.String()),
		),
		svc("198.18.1.2:80"),
		svc("198.18.1.3:80", ep("198.18.2.3:8080", true, "spiffe://other.example/ns/shop/sa/web")),
		pod("198.18.1.1", true, dbID.String()),
		pod("198.18.2.1", true, webID.String()),
		pod("198.18.2.2", false, ""),
		pod("198.18.3.1", true, "not a spiffe id"),
		pod("198.18.3.2", true, "spiffe://other.example/ns/x/sa/y"),
		pod("198.18.3.3", true, ""),
		pod("::ffff:198.18.3.4", true, apiID.String()),
		&controlplanev1.Destination{Address: "198.18.3.5", Kind: controlplanev1.Destination_SERVICE},
		&controlplanev1.Destination{Address: "198.18.3.6:80", Kind: controlplanev1.Destination_POD, Meshed: true, Identity: webID.String()},
		&controlplanev1.Destination{Address: "198.18.3.7", Meshed: true, Identity: webID.String()},
		pod("198.18.3.8:0", true, webID.String()),
		pod("fe80::1%eth0", true, webID.String()),
		pod("nonsense", true, webID.String()),
		pod("198.18.3.9", false, "garbage, but the pod is not meshed"),
		pod("198.18.3.10", true, webID.String()+"/../../ns/kube-system/sa/admin"),
		&controlplanev1.Destination{Address: "198.18.1.4:80", Kind: controlplanev1.Destination_SERVICE, Namespace: "shop", Name: "web",
			Protocol: "grpc", RequestTimeoutMs: 2500, ConnectTimeoutMs: 300, Endpoints: []*controlplanev1.Endpoint{ep("198.18.2.1:8080", true, webID.String())}},
		&controlplanev1.Destination{Address: "198.18.1.5:80", Kind: controlplanev1.Destination_SERVICE, Namespace: "shop", Name: "odd", Protocol: "sctp-ish"},
		&controlplanev1.Destination{Address: "198.18.3.11", Kind: controlplanev1.Destination_POD, Meshed: true, Identity: webID.String(), OpaquePorts: []uint32{3306, 0, 70000, 25}},
	))

	svc1 := client.Destination{Service: true, Endpoints: []client.Endpoint{
		endpoint("198.18.2.1:8080", webID),
		endpoint("198.18.2.2:8080", spiffeid.ID{}),
		endpoint("198.18.2.4:8080", apiID),
	}}
	for _, tc := range []struct {
		name, addr string
		want       client.Destination
		bad        bool // an error wrapping ErrBadDestination
	}{
		{"service port", "198.18.1.1:80", svc1, false},
		{"service port through an IPv4-mapped address", "[::ffff:198.18.1.1]:80", svc1, false},
		{"another port of the Service's IP is the pod there", "198.18.1.1:5432", client.Destination{Meshed: true, Identity: dbID}, false},
		{"service without ready endpoints", "198.18.1.2:80", client.Destination{Service: true}, false},
		{"service whose every endpoint was refused", "198.18.1.3:80", client.Destination{Service: true}, false},
		{"meshed pod, any port", "198.18.2.1:9999", client.Destination{Meshed: true, Identity: webID}, false},
		{"unmeshed pod", "198.18.2.2:8080", client.Destination{}, false},
		{"unmeshed pod with a bad identity", "198.18.3.9:1", client.Destination{}, false},
		{"meshed pod, identity not a SPIFFE ID", "198.18.3.1:80", client.Destination{}, true},
		{"meshed pod, identity of another trust domain", "198.18.3.2:80", client.Destination{}, true},
		{"meshed pod, no identity", "198.18.3.3:80", client.Destination{}, true},
		{"meshed pod, identity with dot segments", "198.18.3.10:80", client.Destination{}, true},
		{"pod sent IPv4-mapped", "198.18.3.4:1", client.Destination{Meshed: true, Identity: apiID}, false},
		{"pod kind sent as a Service", "198.18.3.5:80", client.Destination{}, true},
		{"Service port sent as a pod", "198.18.3.6:80", client.Destination{}, true},
		{"other port of the IP of that Service port", "198.18.3.6:81", client.Destination{}, false},
		{"unknown kind", "198.18.3.7:1", client.Destination{}, true},
		{"unknown address", "198.18.9.9:80", client.Destination{}, false},
		{"address sent with port 0", "198.18.3.8:80", client.Destination{}, false},
		{"service with name, protocol and timeouts", "198.18.1.4:80", client.Destination{Service: true, Name: "shop/web", Protocol: "grpc",
			RequestTimeout: 2500 * time.Millisecond, ConnectTimeout: 300 * time.Millisecond, Endpoints: []client.Endpoint{endpoint("198.18.2.1:8080", webID)}}, false},
		// An unknown declaration is not trusted: detected instead.
		{"service with an unknown protocol", "198.18.1.5:80", client.Destination{Service: true, Name: "shop/odd"}, false},
		{"pod with opaque ports, out-of-range ones dropped", "198.18.3.11:1", client.Destination{Meshed: true, Identity: webID, OpaquePorts: []uint16{3306, 25}}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := lookup(t, c, tc.addr)
			if tc.bad {
				if !errors.Is(err, client.ErrBadDestination) {
					t.Fatalf("Lookup(%s) = %+v, %v; want an error wrapping ErrBadDestination", tc.addr, got, err)
				}
				return
			}
			if err != nil || !same(got, tc.want) {
				t.Fatalf("Lookup(%s) = %+v, %v; want %+v", tc.addr, got, err, tc.want)
			}
		})
	}

	for reason, want := range map[string]float64{
		// garbage and port 0 endpoints; port 0, zoned and nonsense pods.
		"bad_address": 5,
		// two endpoints of the other trust domain, one without identity;
		// pods 3.1, 3.2, 3.3, 3.10.
		"bad_identity": 7,
		// 3.5, 3.6, 3.7.
		"bad_kind": 3,
		// 1.5.
		"bad_protocol": 1,
	} {
		if got := metric(t, reg, "mesh_proxy_control_rejected_total", "kind", "destinations", "reason", reason); got != want {
			t.Errorf("rejected{reason=%q} = %v, want %v", reason, got, want)
		}
	}
}

// TestChanges: a snapshot, then upserts and removes applied in that order,
// then a new snapshot that replaces everything.
func TestChanges(t *testing.T) {
	c, _, st := destinationsClient(t, nil)
	web := client.Destination{Meshed: true, Identity: webID}
	api := client.Destination{Meshed: true, Identity: apiID}
	steps := []struct {
		name string
		msg  *controlplanev1.Destinations
		want map[string]client.Destination // by address looked up
	}{
		{"snapshot", snapshot(pod("198.18.0.1", true, webID.String()), pod("198.18.0.2", true, apiID.String()), svc("198.18.100.1:80", ep("198.18.0.1:8080", true, webID.String()))),
			map[string]client.Destination{
				"198.18.0.1:80":   web,
				"198.18.0.2:80":   api,
				"198.18.0.3:80":   {},
				"198.18.100.1:80": {Service: true, Endpoints: []client.Endpoint{endpoint("198.18.0.1:8080", webID)}},
			}},
		{"upserts then removes", &controlplanev1.Destinations{
			Upserts: []*controlplanev1.Destination{
				pod("198.18.0.3", true, webID.String()),
				pod("198.18.0.1", true, apiID.String()),
				pod("198.18.0.4", true, webID.String()),
				svc("198.18.100.1:80", ep("198.18.0.3:8080", true, webID.String()), ep("198.18.0.5:8080", false, "")),
			},
			Removes: []string{"198.18.0.2", "198.18.0.4", "198.18.7.7", "::ffff:198.18.0.3:99", "not an address"},
		}, map[string]client.Destination{
			"198.18.0.1:80":   api,
			"198.18.0.2:80":   {},
			"198.18.0.3:80":   web,
			"198.18.0.4:80":   {},
			"198.18.100.1:80": {Service: true, Endpoints: []client.Endpoint{endpoint("198.18.0.3:8080", webID), endpoint("198.18.0.5:8080", spiffeid.ID{})}},
		}},
		{"remove a Service port, IPv4-mapped", &controlplanev1.Destinations{Removes: []string{"[::ffff:198.18.100.1]:80"}},
			map[string]client.Destination{
				"198.18.100.1:80": {},
				"198.18.0.1:80":   api,
			}},
		{"a new snapshot forgets what it does not name", snapshot(pod("198.18.0.9", true, webID.String())),
			map[string]client.Destination{
				"198.18.0.1:80": {},
				"198.18.0.3:80": {},
				"198.18.0.9:80": web,
			}},
		{"an empty snapshot forgets everything", snapshot(),
			map[string]client.Destination{"198.18.0.9:80": {}}},
	}
	for _, step := range steps {
		apply(t, c, st, step.msg)
		for addr, want := range step.want {
			got, err := lookup(t, c, addr)
			if err != nil || !same(got, want) {
				t.Fatalf("%s: Lookup(%s) = %+v, %v; want %+v", step.name, addr, got, err, want)
			}
		}
	}
}

// TestLookupWaitsForSnapshot: a Lookup made before the first snapshot
// blocks until it arrives, then answers from it.
func TestLookupWaitsForSnapshot(t *testing.T) {
	c, _, st := destinationsClient(t, nil)
	type result struct {
		d   client.Destination
		err error
	}
	got := make(chan result, 1)
	go func() {
		d, err := c.Lookup(context.Background(), netip.MustParseAddrPort("198.18.0.1:80"))
		got <- result{d, err}
	}()
	select {
	case r := <-got:
		t.Fatalf("Lookup returned before the snapshot: %+v, %v", r.d, r.err)
	case <-time.After(50 * time.Millisecond):
	}
	if c.Ready() {
		t.Fatal("Ready before the snapshot")
	}
	st.push(t, snapshot(pod("198.18.0.1", true, webID.String())))
	select {
	case r := <-got:
		if r.err != nil || !same(r.d, client.Destination{Meshed: true, Identity: webID}) {
			t.Fatalf("Lookup = %+v, %v; want the snapshot's meshed pod", r.d, r.err)
		}
	case <-time.After(wait):
		t.Fatal("Lookup still waiting after the snapshot")
	}
	if !c.Ready() {
		t.Fatal("not Ready after the snapshot")
	}
}

// TestLookupPending: without a snapshot Lookup gives up after PendingWait
// or when the caller's context ends, whichever is first, with ErrPending;
// never "not meshed".
func TestLookupPending(t *testing.T) {
	for _, tc := range []struct {
		name        string
		pendingWait time.Duration
		ctxTimeout  time.Duration
		server      bool // a controller that opens the stream but sends nothing; else none at all
		wantCtxErr  bool
	}{
		{"PendingWait first, silent controller", 100 * time.Millisecond, time.Minute, true, false},
		{"PendingWait first, no controller", 100 * time.Millisecond, time.Minute, false, false},
		{"caller's deadline first", time.Minute, 100 * time.Millisecond, true, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			addr := "127.0.0.1:1" // nothing listens on port 1 of loopback
			if tc.server {
				srv := newFakeCP()
				addr, _ = serve(t, srv)
				defer func() { next(t, srv.dests) }()
			}
			cfg := config(dial(t, addr))
			cfg.Destinations = true
			cfg.PendingWait = tc.pendingWait
			c := start(t, cfg)
			// began before the context: its deadline counts from its making.
			began := time.Now()
			ctx, cancel := context.WithTimeout(context.Background(), tc.ctxTimeout)
			defer cancel()
			d, err := c.Lookup(ctx, netip.MustParseAddrPort("198.18.0.1:80"))
			took := time.Since(began)
			if !errors.Is(err, client.ErrPending) {
				t.Fatalf("Lookup = %+v, %v; want an error wrapping ErrPending", d, err)
			}
			if errors.Is(err, context.DeadlineExceeded) != tc.wantCtxErr {
				t.Errorf("Lookup error %q: wraps the context's error: %v, want %v", err, !tc.wantCtxErr, tc.wantCtxErr)
			}
			if took < 100*time.Millisecond || took > 2*time.Second {
				t.Errorf("Lookup gave up after %s, want about 100ms", took)
			}
		})
	}
}

// TestFirstMessageNotSnapshot: a stream that starts with a change is a
// protocol error: nothing of it is applied and the client reconnects.
func TestFirstMessageNotSnapshot(t *testing.T) {
	reg := prometheus.NewRegistry()
	c, srv, st := destinationsClient(t, reg)
	st.push(t, &controlplanev1.Destinations{Upserts: []*controlplanev1.Destination{pod("198.18.0.1", false, "")}})
	st2 := next(t, srv.dests)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if d, err := c.Lookup(ctx, netip.MustParseAddrPort("198.18.0.1:80")); !errors.Is(err, client.ErrPending) {
		t.Fatalf("after a change without a snapshot, Lookup = %+v, %v; want ErrPending", d, err)
	}
	if c.Ready() {
		t.Fatal("Ready without a snapshot")
	}
	if got := metric(t, reg, "mesh_proxy_control_reconnects_total", "kind", "destinations"); got < 1 {
		t.Fatalf("reconnects = %v, want at least 1", got)
	}
	apply(t, c, st2, snapshot(pod("198.18.0.1", true, webID.String())))
	if d, err := lookup(t, c, "198.18.0.1:80"); err != nil || !same(d, client.Destination{Meshed: true, Identity: webID}) {
		t.Fatalf("after the snapshot, Lookup = %+v, %v", d, err)
	}
}

// TestLookupDoesNotAllocate: once synced, a hit (and a miss) costs no
// allocation, since every connection the proxy intercepts asks.
func TestLookupDoesNotAllocate(t *testing.T) {
	c, _, st := destinationsClient(t, nil)
	apply(t, c, st, snapshot(pod("198.18.0.1", true, webID.String()), svc("198.18.100.1:80", ep("198.18.0.1:8080", true, webID.String())), pod("198.18.0.2", true, "bad")))
	ctx := context.Background()
	for _, addr := range []string{"198.18.0.1:80", "198.18.100.1:80", "198.18.0.2:80", "198.18.9.9:80", "[::ffff:198.18.0.1]:80"} {
		a := netip.MustParseAddrPort(addr)
		if n := testing.AllocsPerRun(100, func() { _, _ = c.Lookup(ctx, a) }); n != 0 {
			t.Errorf("Lookup(%s): %v allocations, want 0", addr, n)
		}
	}
}

func BenchmarkLookup(b *testing.B) {
	srv := newFakeCP()
	addr, _ := serve(b, srv)
	cfg := config(dial(b, addr))
	cfg.Destinations = true
	c, err := client.New(cfg)
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	defer func() { cancel(); <-done }()
	st := <-srv.dests
	// A cluster-sized table: 10,000 pods, 1,000 Service ports with 3
	// endpoints each.
	msg := snapshot()
	for i := range 10000 {
		msg.Upserts = append(msg.Upserts, pod(fmt.Sprintf("198.18.%d.%d", i/250, i%250+1), true, webID.String()))
	}
	for i := range 1000 {
		s := svc(fmt.Sprintf("198.18.200.%d:%d", i%250+1, 80+i/250))
		for j := range 3 {
			s.Endpoints = append(s.Endpoints, ep(fmt.Sprintf("198.18.%d.%d:8080", j, i%250+1), true, webID.String()))
		}
		msg.Upserts = append(msg.Upserts, s)
	}
	updated := c.Updated()
	st.send <- msg
	<-updated
	for _, bc := range []struct{ name, addr string }{{"pod", "198.18.20.7:443"}, {"service", "198.18.200.9:81"}} {
		a := netip.MustParseAddrPort(bc.addr)
		b.Run(bc.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if d, err := c.Lookup(ctx, a); err != nil || !(d.Meshed || d.Service) {
					b.Fatalf("Lookup(%s) = %+v, %v", a, d, err)
				}
			}
		})
	}
}
