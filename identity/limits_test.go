package identity

import (
	"context"
	"net"
	"net/netip"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"golang.org/x/time/rate"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
)

// TestSourceLimiter drives the per-address buckets through sequences of
// calls at given times: the burst, refill, independence of addresses, the
// shared overflow bucket past the tracking cap, and the eviction of idle
// addresses.
func TestSourceLimiter(t *testing.T) {
	a, b, c := netip.MustParseAddr("198.18.0.1"), netip.MustParseAddr("198.18.0.2"), netip.MustParseAddr("198.18.0.3")
	type call struct {
		src    netip.Addr
		at     time.Duration // since the start
		n      int           // calls at that instant
		ok     int           // how many of them are allowed
		reason string        // the refusal of the others
	}
	tests := []struct {
		name        string
		limit       rate.Limit
		burst, max  int
		calls       []call
		wantTracked int
	}{
		{
			name: "burst then refused", limit: 1, burst: 3, max: 10,
			calls:       []call{{src: a, n: 10, ok: 3, reason: refusedSource}},
			wantTracked: 1,
		},
		{
			name: "other address unaffected", limit: 1, burst: 3, max: 10,
			calls: []call{
				{src: a, n: 5, ok: 3, reason: refusedSource},
				{src: b, n: 3, ok: 3},
			},
			wantTracked: 2,
		},
		{
			name: "refills at the rate", limit: 2, burst: 2, max: 10,
			calls: []call{
				{src: a, n: 4, ok: 2, reason: refusedSource},
				{src: a, at: time.Second, n: 4, ok: 2, reason: refusedSource},
			},
			wantTracked: 1,
		},
		{
			name: "past the cap new addresses share one bucket", limit: 1, burst: 2, max: 1,
			calls: []call{
				{src: a, n: 1, ok: 1},
				{src: b, n: 1, ok: 1},
				{src: c, n: 3, ok: 1, reason: refusedOverflow},
				{src: b, n: 1, ok: 0, reason: refusedOverflow},
				// The tracked address keeps its own bucket.
				{src: a, n: 1, ok: 1},
			},
			wantTracked: 1,
		},
		{
			name: "idle addresses are forgotten to make room", limit: 1, burst: 2, max: 1,
			calls: []call{
				{src: a, n: 2, ok: 2},
				// a's bucket is full again after burst/rate = 2 s: it goes,
				// and b gets a bucket of its own, not the overflow one.
				{src: b, at: 2 * time.Second, n: 3, ok: 2, reason: refusedSource},
			},
			wantTracked: 1,
		},
		{
			name: "busy addresses are not forgotten", limit: 1, burst: 2, max: 1,
			calls: []call{
				{src: a, n: 2, ok: 2},
				{src: a, at: 1500 * time.Millisecond, n: 1, ok: 1},
				{src: b, at: 2 * time.Second, n: 3, ok: 2, reason: refusedOverflow},
			},
			wantTracked: 1,
		},
		{
			name: "rate.Inf turns the limit off", limit: rate.Inf, burst: 1, max: 1,
			calls:       []call{{src: a, n: 100, ok: 100}, {src: b, n: 100, ok: 100}},
			wantTracked: 0,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l := newSourceLimiter(tt.limit, tt.burst, tt.max)
			start := time.Unix(1_700_000_000, 0)
			for i, c := range tt.calls {
				ok := 0
				for range c.n {
					allowed, reason := l.allow(c.src, start.Add(c.at))
					if allowed {
						ok++
						continue
					}
					if reason != c.reason {
						t.Errorf("call %d from %v: reason %q, want %q", i, c.src, reason, c.reason)
					}
				}
				if ok != c.ok {
					t.Errorf("call %d from %v at %v: %d of %d allowed, want %d", i, c.src, c.at, ok, c.n, c.ok)
				}
			}
			if got := l.tracked(); got != tt.wantTracked {
				t.Errorf("tracked %d addresses, want %d", got, tt.wantTracked)
			}
		})
	}
}

// TestSourceLimiterSpray: a spray from many more addresses than the cap
// neither grows the table past the cap nor gets more calls through than
// the tracked buckets and the one overflow bucket hold.
func TestSourceLimiterSpray(t *testing.T) {
	const max, burst, sources = 100, 3, 20000
	l := newSourceLimiter(rate.Every(time.Hour), burst, max)
	now := time.Unix(1_700_000_000, 0)
	allowed := 0
	for i := range sources {
		src := netip.AddrFrom4([4]byte{198, 18, byte(i >> 8), byte(i)})
		// Time moves, but less than an entry needs to be forgotten.
		if ok, _ := l.allow(src, now.Add(time.Duration(i)*time.Millisecond)); ok {
			allowed++
		}
	}
	if got := l.tracked(); got != max {
		t.Errorf("tracked %d addresses, want the cap %d", got, max)
	}
	if want := max + burst; allowed != want {
		t.Errorf("%d calls allowed, want %d (one per tracked address, a burst of the overflow bucket)", allowed, want)
	}
}

type strAddr string

func (a strAddr) Network() string { return "test" }
func (a strAddr) String() string  { return string(a) }

// TestSourceAddr: one host is one key however its address is written.
func TestSourceAddr(t *testing.T) {
	tests := []struct {
		name string
		addr net.Addr // nil: no peer in the context
		want string   // "" is the zero address
	}{
		{"IPv4", &net.TCPAddr{IP: net.IPv4(198, 18, 0, 1).To4(), Port: 1}, "198.18.0.1"},
		{"IPv4 in 16 bytes", &net.TCPAddr{IP: net.IPv4(198, 18, 0, 1), Port: 1}, "198.18.0.1"},
		{"IPv4-mapped IPv6", &net.TCPAddr{IP: net.ParseIP("::ffff:198.18.0.1"), Port: 1}, "198.18.0.1"},
		{"IPv6", &net.TCPAddr{IP: net.ParseIP("2001:db8::1"), Port: 1}, "2001:db8::1"},
		{"zone dropped", &net.TCPAddr{IP: net.ParseIP("fe80::1"), Zone: "eth0", Port: 1}, "fe80::1"},
		{"TCP address without IP", &net.TCPAddr{Port: 1}, ""},
		{"other address type, mapped", strAddr("[::ffff:198.18.0.9]:443"), "198.18.0.9"},
		{"other address type, not IP", strAddr("/run/mesh.sock"), ""},
		{"Unix socket", &net.UnixAddr{Name: "/run/mesh.sock", Net: "unix"}, ""},
		{"no peer", nil, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := context.Background()
			if tt.addr != nil {
				ctx = peer.NewContext(ctx, &peer.Peer{Addr: tt.addr})
			}
			got := sourceAddr(ctx)
			if tt.want == "" {
				if got.IsValid() {
					t.Fatalf("sourceAddr = %v, want the zero address", got)
				}
				return
			}
			if got != netip.MustParseAddr(tt.want) {
				t.Fatalf("sourceAddr = %v, want %s", got, tt.want)
			}
		})
	}
}

// TestReviewSlots, in a synctest bubble so waits are exact: a free slot is
// taken at once, a full semaphore refuses after its wait or when the
// caller gives up, and a released slot goes to a waiter.
func TestReviewSlots(t *testing.T) {
	tests := []struct {
		name     string
		ctxAfter time.Duration // cancel the caller's context after this; 0: never
		freeAt   time.Duration // release the held slot after this; 0: never
		wantCode codes.Code
		wantWait time.Duration
	}{
		{name: "refused after the wait", wantCode: codes.ResourceExhausted, wantWait: 2 * time.Second},
		{name: "caller gives up first", ctxAfter: 500 * time.Millisecond, wantCode: codes.Canceled, wantWait: 500 * time.Millisecond},
		{name: "slot freed within the wait", freeAt: 1500 * time.Millisecond, wantCode: codes.OK, wantWait: 1500 * time.Millisecond},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				r := newReviewSlots(1, 2*time.Second)
				held, err := r.acquire(t.Context())
				if err != nil {
					t.Fatalf("first acquire: %v", err)
				}
				if tt.freeAt > 0 {
					time.AfterFunc(tt.freeAt, held)
				}
				ctx, cancel := context.WithCancel(t.Context())
				defer cancel()
				if tt.ctxAfter > 0 {
					time.AfterFunc(tt.ctxAfter, cancel)
				}
				start := time.Now()
				release, err := r.acquire(ctx)
				if waited := time.Since(start); waited != tt.wantWait {
					t.Errorf("waited %v, want %v", waited, tt.wantWait)
				}
				if status.Code(err) != tt.wantCode {
					t.Fatalf("acquire = %v, want %v", err, tt.wantCode)
				}
				if err == nil {
					release()
				} else if tt.wantCode == codes.ResourceExhausted && !strings.Contains(err.Error(), "1 token reviews already in flight") {
					t.Errorf("refusal %q does not say why", err)
				}
				if got := len(r.slots); tt.freeAt > 0 && got != 0 {
					t.Errorf("%d slots held after every release", got)
				}
			})
		})
	}
}

// TestConfigDefaults pins the documented zero values and rejects negative
// limits, naming the field.
func TestConfigDefaults(t *testing.T) {
	var cfg ServerConfig
	if err := cfg.defaults(); err != nil {
		t.Fatal(err)
	}
	if cfg.RatePerSource != 5 || cfg.BurstPerSource != 50 || cfg.MaxSources != 10000 ||
		cfg.MaxConcurrentReviews != 32 || cfg.ReviewWait != time.Second ||
		cfg.RatePerPod != rate.Every(6*time.Second) || cfg.BurstPerPod != 10 || cfg.Audience != DefaultAudience {
		t.Fatalf("defaults = %+v", cfg)
	}
	bad := []struct {
		cfg  ServerConfig
		want string
	}{
		{ServerConfig{RatePerSource: -1}, "identity: ServerConfig.RatePerSource is negative (-1)"},
		{ServerConfig{BurstPerSource: -1}, "identity: ServerConfig.BurstPerSource is negative (-1)"},
		{ServerConfig{MaxSources: -1}, "identity: ServerConfig.MaxSources is negative (-1)"},
		{ServerConfig{MaxConcurrentReviews: -1}, "identity: ServerConfig.MaxConcurrentReviews is negative (-1)"},
		{ServerConfig{ReviewWait: -time.Second}, "identity: ServerConfig.ReviewWait is negative (-1s)"},
		{ServerConfig{RatePerPod: -1}, "identity: ServerConfig.RatePerPod is negative (-1)"},
		{ServerConfig{BurstPerPod: -1}, "identity: ServerConfig.BurstPerPod is negative (-1)"},
	}
	for _, tt := range bad {
		t.Run(tt.want, func(t *testing.T) {
			if err := tt.cfg.defaults(); err == nil || err.Error() != tt.want {
				t.Fatalf("defaults() = %v, want %q", err, tt.want)
			}
		})
	}
}

// TestServerOptionsConfig: negative transport limits are refused, each
// named; zero and positive ones give a full set of options.
func TestServerOptionsConfig(t *testing.T) {
	opts, err := ServerOptions(TransportConfig{})
	if err != nil || len(opts) == 0 {
		t.Fatalf("ServerOptions(zero) = %d options, %v", len(opts), err)
	}
	_, err = ServerOptions(TransportConfig{HandshakeTimeout: -1, MinPingInterval: -time.Second})
	for _, field := range []string{"HandshakeTimeout", "MinPingInterval"} {
		if err == nil || !strings.Contains(err.Error(), "identity: TransportConfig."+field+" is negative") {
			t.Errorf("ServerOptions = %v, want %s named", err, field)
		}
	}
}
