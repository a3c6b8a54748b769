package client_test

import (
	"context"
	"crypto/x509"
	"errors"
	"log/slog"
	"net/netip"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	controlplanev1 "github.com/mesh-dev/mesh/controlplane/api/v1"
	"github.com/mesh-dev/mesh/controlplane/client"
	"github.com/mesh-dev/mesh/internal/testpki"
)

// TestNew: what New refuses, each with the field named.
func TestNew(t *testing.T) {
	conn := dial(t, "127.0.0.1:1")
	valid := func() client.Config {
		cfg := config(conn)
		cfg.Destinations = true
		return cfg
	}
	for _, tc := range []struct {
		name   string
		change func(*client.Config)
		want   string // "" valid
	}{
		{"valid", func(*client.Config) {}, ""},
		{"defaults", func(c *client.Config) { c.MinBackoff, c.MaxBackoff, c.Logger = 0, 0, nil }, ""},
		{"no conn", func(c *client.Config) { c.Conn = nil }, "client: Config.Conn is required"},
		{"no namespace", func(c *client.Config) { c.Namespace = "" }, "client: Config.Namespace and Config.Pod are required"},
		{"no pod", func(c *client.Config) { c.Pod = "" }, "client: Config.Namespace and Config.Pod are required"},
		{"pod not UTF-8", func(c *client.Config) { c.Pod = "web\xff" }, "client: Config.Namespace and Config.Pod must be valid UTF-8"},
		{"no trust domain", func(c *client.Config) { c.TrustDomain = spiffeid.TrustDomain{} }, "client: Config.TrustDomain is required"},
		{"nothing watched", func(c *client.Config) { c.Destinations = false }, "client: nothing to watch"},
		{"negative wait", func(c *client.Config) { c.PendingWait = -time.Second }, "must not be negative"},
		{"min above max", func(c *client.Config) { c.MinBackoff, c.MaxBackoff = time.Minute, time.Second }, "client: Config.MinBackoff 1m0s is above MaxBackoff 1s"},
		{"min above the default max", func(c *client.Config) { c.MinBackoff, c.MaxBackoff = time.Minute, 0 }, "client: Config.MinBackoff 1m0s is above MaxBackoff 15s"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := valid()
			tc.change(&cfg)
			_, err := client.New(cfg)
			if tc.want == "" {
				if err != nil {
					t.Fatalf("New: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("New: %v, want an error containing %q", err, tc.want)
			}
		})
	}
	t.Run("metrics registered twice", func(t *testing.T) {
		reg := prometheus.NewRegistry()
		cfg := valid()
		cfg.Registerer = reg
		if _, err := client.New(cfg); err != nil {
			t.Fatal(err)
		}
		if _, err := client.New(cfg); err == nil || !strings.Contains(err.Error(), "client: register metrics") {
			t.Fatalf("second New on one registry: %v, want a registration error", err)
		}
	})
}

// TestRunTwice: Run runs once; a second call is an error, not a second
// set of watches racing over the same state.
func TestRunTwice(t *testing.T) {
	cfg := config(dial(t, "127.0.0.1:1"))
	cfg.Destinations = true
	c, err := client.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := c.Run(ctx); err != nil {
		t.Fatalf("first Run = %v, want nil at its context's end", err)
	}
	if err := c.Run(ctx); err == nil || !strings.Contains(err.Error(), "client: Run called twice") {
		t.Fatalf("second Run = %v, want an error", err)
	}
}

// all watches all three streams, recording the bundles and policies
// accepted.
func all(conn grpc.ClientConnInterface, reg prometheus.Registerer) client.Config {
	cfg := config(conn)
	cfg.Destinations = true
	cfg.Registerer = reg
	cfg.Policy = func(p *controlplanev1.Policy) error {
		if p.GetVersion() == "bad" {
			return errors.New("authz: bad")
		}
		return nil
	}
	cfg.Bundle = func([]*x509.Certificate) error { return nil }
	return cfg
}

// TestReady: Ready once every enabled watch delivered, and not before;
// still Ready when the controller is gone.
func TestReady(t *testing.T) {
	root := testpki.New(t, "cluster.local").CA.Bundle()[0]
	srv := newFakeCP()
	addr, stop := serve(t, srv)
	reg := prometheus.NewRegistry()
	c := start(t, all(dial(t, addr), reg))
	dests, policies, bundles := next(t, srv.dests), next(t, srv.policies), next(t, srv.bundles)

	steps := []struct {
		name  string
		do    func(t *testing.T)
		ready bool
	}{
		{"nothing yet", func(*testing.T) {}, false},
		{"a snapshot", func(t *testing.T) { apply(t, c, dests, snapshot()) }, false},
		{"a refused policy", func(t *testing.T) {
			policies.push(t, &controlplanev1.Policy{Version: "bad"})
			nextAck(t, srv)
		}, false},
		{"an accepted policy", func(t *testing.T) {
			policies.push(t, &controlplanev1.Policy{Version: "v1"})
			nextAck(t, srv)
		}, false},
		{"a refused bundle", func(t *testing.T) {
			bundles.push(t, &controlplanev1.TrustBundle{})
			waitFor(t, "the refusal", func() bool {
				return metric(t, reg, "mesh_proxy_control_rejected_total", "kind", "bundle", "reason", "empty_bundle") == 1
			})
		}, false},
		{"an accepted bundle", func(t *testing.T) {
			bundles.push(t, &controlplanev1.TrustBundle{Roots: [][]byte{root.Raw}})
			waitFor(t, "Ready", c.Ready)
		}, true},
		{"the controller gone", func(t *testing.T) {
			stop()
			for _, kind := range []string{"policy", "destinations", "bundle"} {
				waitFor(t, kind+" reconnecting", func() bool {
					return metric(t, reg, "mesh_proxy_control_reconnects_total", "kind", kind) >= 1
				})
			}
		}, true},
	}
	for _, step := range steps {
		step.do(t)
		if got := c.Ready(); got != step.ready {
			t.Fatalf("after %s: Ready = %v, want %v", step.name, got, step.ready)
		}
	}
}

// TestFailover: a replica dies mid-stream. The client keeps what it knew
// (Lookup answers, Ready), reconnects to the other replica, and resyncs
// from its snapshot: what the new snapshot lacks is gone.
func TestFailover(t *testing.T) {
	root := testpki.New(t, "cluster.local").CA.Bundle()[0]
	srv1, srv2 := newFakeCP(), newFakeCP()
	addr1, stop1 := serve(t, srv1)
	addr2, _ := serve(t, srv2)
	reg := prometheus.NewRegistry()
	c := start(t, all(dial(t, addr1, addr2), reg))
	kinds := []string{"policy", "destinations", "bundle"}

	dests := next(t, srv1.dests)
	apply(t, c, dests, snapshot(pod("198.18.0.1", true, webID.String()), pod("198.18.0.2", true, apiID.String())))
	next(t, srv1.policies).push(t, &controlplanev1.Policy{Version: "v1"})
	nextAck(t, srv1)
	next(t, srv1.bundles).push(t, &controlplanev1.TrustBundle{Roots: [][]byte{root.Raw}})
	waitFor(t, "Ready", c.Ready)
	for _, kind := range kinds {
		if got := metric(t, reg, "mesh_proxy_control_stream_connected", "kind", kind); got != 1 {
			t.Fatalf("connected{kind=%s} = %v with the stream up, want 1", kind, got)
		}
	}

	stop1()
	for _, kind := range kinds {
		waitFor(t, kind+" disconnected", func() bool {
			return metric(t, reg, "mesh_proxy_control_stream_connected", "kind", kind) == 0
		})
	}
	if !c.Ready() {
		t.Fatal("not Ready after losing the controller")
	}
	for addr, want := range map[string]client.Destination{
		"198.18.0.1:80": {Meshed: true, Identity: webID},
		"198.18.0.2:80": {Meshed: true, Identity: apiID},
	} {
		if d, err := lookup(t, c, addr); err != nil || !same(d, want) {
			t.Fatalf("with the controller gone, Lookup(%s) = %+v, %v; want the last state, %+v", addr, d, err, want)
		}
	}

	// The other replica: the client opens every stream there.
	dests2, policies2, bundles2 := next(t, srv2.dests), next(t, srv2.policies), next(t, srv2.bundles)
	apply(t, c, dests2, snapshot(pod("198.18.0.1", true, webID.String()), pod("198.18.0.3", true, dbID.String())))
	policies2.push(t, &controlplanev1.Policy{Version: "v1"})
	if a := nextAck(t, srv2); a.GetVersion() != "v1" || a.GetError() != "" {
		t.Fatalf("ack on the new replica = %v, want v1 ACKed again", a)
	}
	bundles2.push(t, &controlplanev1.TrustBundle{Roots: [][]byte{root.Raw}})
	for addr, want := range map[string]client.Destination{
		"198.18.0.1:80": {Meshed: true, Identity: webID},
		"198.18.0.2:80": {},
		"198.18.0.3:80": {Meshed: true, Identity: dbID},
	} {
		if d, err := lookup(t, c, addr); err != nil || !same(d, want) {
			t.Fatalf("after the resync, Lookup(%s) = %+v, %v; want %+v", addr, d, err, want)
		}
	}
	for _, kind := range kinds {
		waitFor(t, kind+" connected again", func() bool {
			return metric(t, reg, "mesh_proxy_control_stream_connected", "kind", kind) == 1
		})
		if got := metric(t, reg, "mesh_proxy_control_reconnects_total", "kind", kind); got < 1 {
			t.Errorf("reconnects{kind=%s} = %v, want at least 1", kind, got)
		}
	}
	if got := metric(t, reg, "mesh_proxy_control_messages_total", "kind", "destinations"); got != 2 {
		t.Errorf("messages{kind=destinations} = %v, want 2", got)
	}
}

// TestRefusalsLogged: a controller refusing this pod is logged as an
// error, other failures as warnings, each with its gRPC code; either way
// the client keeps retrying.
func TestRefusalsLogged(t *testing.T) {
	for _, tc := range []struct {
		code  codes.Code
		level slog.Level
	}{
		{codes.PermissionDenied, slog.LevelError},
		{codes.Unauthenticated, slog.LevelError},
		{codes.Unavailable, slog.LevelWarn},
		{codes.Internal, slog.LevelWarn},
	} {
		t.Run(tc.code.String(), func(t *testing.T) {
			srv := newFakeCP()
			srv.refuse = status.Error(tc.code, "scripted refusal")
			addr, _ := serve(t, srv)
			rec := &recorder{}
			cfg := config(dial(t, addr))
			cfg.Destinations = true
			cfg.Logger = slog.New(rec)
			start(t, cfg)
			waitFor(t, "three attempts", func() bool { return srv.attempts.Load() >= 3 })
			r, ok := rec.find("", "code", tc.code.String())
			if !ok {
				t.Fatalf("no log record with code=%s", tc.code)
			}
			if r.Level != tc.level {
				t.Fatalf("logged %q at %s, want %s", r.Message, r.Level, tc.level)
			}
		})
	}
}

// TestRunStops: Run returns promptly once its context ends, whether its
// streams are open or it is waiting to reconnect, and leaves no goroutine
// behind.
func TestRunStops(t *testing.T) {
	for _, tc := range []struct {
		name       string
		controller bool
		minBackoff time.Duration
	}{
		{"streams open", true, 5 * time.Millisecond},
		{"backing off", false, time.Hour},
	} {
		t.Run(tc.name, func(t *testing.T) {
			addr := "127.0.0.1:1"
			srv := newFakeCP()
			if tc.controller {
				addr, _ = serve(t, srv)
			}
			before := runtime.NumGoroutine()
			conn := dial(t, addr)
			reg := prometheus.NewRegistry()
			cfg := all(conn, reg)
			cfg.MinBackoff, cfg.MaxBackoff = tc.minBackoff, tc.minBackoff
			c, err := client.New(cfg)
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() { done <- c.Run(ctx) }()
			if tc.controller {
				next(t, srv.dests)
				next(t, srv.policies)
				next(t, srv.bundles)
			} else {
				// Wait until all three have failed once and are backing
				// off (the reconnect is counted just before).
				for _, kind := range []string{"policy", "destinations", "bundle"} {
					waitFor(t, kind+" backing off", func() bool {
						return metric(t, reg, "mesh_proxy_control_reconnects_total", "kind", kind) == 1
					})
				}
			}
			began := time.Now()
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Fatalf("Run = %v, want nil", err)
				}
			case <-time.After(wait):
				t.Fatal("Run did not return after its context ended")
			}
			if took := time.Since(began); took > time.Second {
				t.Fatalf("Run took %s to return", took)
			}
			conn.Close()
			waitFor(t, "goroutines to end", func() bool { return runtime.NumGoroutine() <= before })
		})
	}
}

// TestUnwatchedLookup: a client not watching destinations refuses
// lookups at once rather than wait for a snapshot that cannot come.
func TestUnwatchedLookup(t *testing.T) {
	cfg := config(dial(t, "127.0.0.1:1"))
	cfg.Bundle = func([]*x509.Certificate) error { return nil }
	c, err := client.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	began := time.Now()
	d, err := c.Lookup(context.Background(), netip.MustParseAddrPort("198.18.0.1:80"))
	if !errors.Is(err, client.ErrPending) || !strings.Contains(err.Error(), "not watched") {
		t.Fatalf("Lookup = %+v, %v; want ErrPending saying destinations are not watched", d, err)
	}
	if took := time.Since(began); took > 100*time.Millisecond {
		t.Fatalf("Lookup took %s", took)
	}
}
