package proxy

import (
	"net/netip"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

func testEndpoints(n int) []Endpoint {
	id := spiffeid.RequireFromString("spiffe://cluster.local/ns/shop/sa/web")
	eps := make([]Endpoint, n)
	for i := range eps {
		eps[i] = Endpoint{Addr: netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 18, 1, byte(i + 1)}), 8080), Meshed: true, Identity: id}
	}
	return eps
}

// fakeClock is a balancer's clock the test moves.
type fakeClock struct{ t time.Time }

func (c *fakeClock) now() time.Time      { return c.t }
func (c *fakeClock) add(d time.Duration) { c.t = c.t.Add(d) }

func newTestBalancer() (*balancer, *fakeClock) {
	c := &fakeClock{t: time.Unix(1e9, 0)}
	b := newBalancer()
	b.now = c.now
	return b, c
}

// simulate runs requests one per millisecond, each taking latency(ep)
// milliseconds, and counts the picks.
func simulate(b *balancer, c *fakeClock, eps []Endpoint, n int, latency func(Endpoint) int) map[netip.AddrPort]int {
	got := map[netip.AddrPort]int{}
	type inflight struct {
		st  *endpointStats
		end int
	}
	var open []inflight
	for i := range n {
		kept := open[:0]
		for _, f := range open {
			if f.end <= i {
				f.st.pending.Add(-1)
				f.st.succeeded()
			} else {
				kept = append(kept, f)
			}
		}
		open = kept
		ep, st, ok := b.pick(eps, nil)
		if !ok {
			panic("no endpoint")
		}
		got[ep.Addr]++
		st.pending.Add(1)
		open = append(open, inflight{st, i + latency(ep)})
		c.add(time.Millisecond)
	}
	for _, f := range open {
		f.st.pending.Add(-1) // all answered at the end
	}
	return got
}

func TestBalancerSpreadsEqualEndpoints(t *testing.T) {
	b, c := newTestBalancer()
	eps := testEndpoints(3)
	got := simulate(b, c, eps, 3000, func(Endpoint) int { return 5 })
	for _, ep := range eps {
		if share := float64(got[ep.Addr]) / 3000; share < 0.28 || share > 0.39 {
			t.Errorf("%s got %.0f%% of equal traffic", ep.Addr, 100*share)
		}
	}
}

// A slow endpoint keeps requests outstanding and so gets fewer new ones;
// a slow answer now and then does not take an endpoint out.
func TestBalancerSlowEndpoint(t *testing.T) {
	b, c := newTestBalancer()
	eps := testEndpoints(3)
	slow := eps[0].Addr
	got := simulate(b, c, eps, 3000, func(ep Endpoint) int {
		if ep.Addr == slow {
			return 40
		}
		return 2
	})
	if share := float64(got[slow]) / 3000; share > 0.15 {
		t.Errorf("a 20x slower endpoint got %.0f%% of the traffic", 100*share)
	}
	b, c = newTestBalancer()
	n := 0
	got = simulate(b, c, eps, 3000, func(ep Endpoint) int {
		if ep.Addr != slow {
			return 2
		}
		if n++; n == 1 || n%200 == 0 {
			return 200 // a cold start, a GC pause
		}
		return 2
	})
	if share := float64(got[slow]) / 3000; share < 0.25 {
		t.Errorf("with a rare slow answer an endpoint got %.0f%% of the traffic, want about a third", 100*share)
	}
}

// A new endpoint competes from its first request.
func TestBalancerNewEndpoint(t *testing.T) {
	b, c := newTestBalancer()
	eps := testEndpoints(3)
	simulate(b, c, eps, 1000, func(Endpoint) int { return 3 })
	grown := testEndpoints(4)
	got := simulate(b, c, grown, 400, func(Endpoint) int { return 3 })
	if n := got[grown[3].Addr]; n < 70 {
		t.Errorf("the new endpoint got %d of the next 400 picks", n)
	}
}

// An endpoint that failed to connect is skipped while others are left,
// longer after each failure, used again when nothing else is, and back
// in the rotation after its time.
func TestBalancerEjection(t *testing.T) {
	b, c := newTestBalancer()
	eps := testEndpoints(2)
	bad := b.get(keyOf(eps[0]))
	bad.failed(c.now())
	for range 50 {
		if ep, _, _ := b.pick(eps, nil); ep.Addr == eps[0].Addr {
			t.Fatal("an ejected endpoint was picked while another was left")
		}
	}
	if ep, _, ok := b.pick(eps[:1], nil); !ok || ep.Addr != eps[0].Addr {
		t.Fatal("with only the ejected endpoint left, nothing was picked")
	}
	c.add(ejectMin + time.Millisecond)
	seen := false
	for range 50 {
		if ep, _, _ := b.pick(eps, nil); ep.Addr == eps[0].Addr {
			seen = true
		}
	}
	if !seen {
		t.Fatal("the endpoint stayed ejected past its time")
	}
	bad.failed(c.now())
	bad.failed(c.now())
	if until := time.Unix(0, bad.ejectedUntil.Load()).Sub(c.now()); until != 4*ejectMin {
		t.Fatalf("ejected for %s after a third failure in a row, want %s", until, 4*ejectMin)
	}
	bad.succeeded()
	if bad.ejectedUntil.Load() != 0 || bad.failures.Load() != 0 {
		t.Fatal("an answer did not end the ejection")
	}
	for range 10 {
		bad.failed(c.now())
	}
	if until := time.Unix(0, bad.ejectedUntil.Load()).Sub(c.now()); until != ejectMax {
		t.Fatalf("ejected for %s after many failures, want the cap %s", until, ejectMax)
	}
	if _, _, ok := b.pick(eps, func(Endpoint) bool { return true }); ok {
		t.Fatal("picked an endpoint when every one was skipped")
	}
}

func TestBalancerForgets(t *testing.T) {
	b, c := newTestBalancer()
	eps := testEndpoints(2)
	simulate(b, c, eps, 10, func(Endpoint) int { return 1 })
	b.get(keyOf(eps[0])).pending.Add(1) // a request still in progress
	c.add(statsIdle + time.Second)
	b.forget()
	if len(b.stats) != 1 {
		t.Fatalf("%d statistics left, want the busy endpoint's only", len(b.stats))
	}
}
