package proxy

import (
	"math/rand/v2"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Load balancing: power of two choices on outstanding requests (Envoy's
// and grpc-go's least_request): of two endpoints picked at random, the one
// with fewer requests in progress gets the request, and an endpoint that
// failed to connect is left out for a while (DESIGN-NOTES §9).
//
// A latency estimate (tower's peak EWMA, which Linkerd uses) was tried
// first and measured here: a new pod's first requests are tens of times
// slower than its peers' (its proxy's first connection to the app, cold
// caches on a loaded node), and the estimate then kept that pod out of the
// rotation for tens of seconds; a gentler average converged too slowly to
// tell endpoints apart. Outstanding requests need no estimate: a slow
// endpoint keeps more requests in progress and so gets fewer new ones, and
// a new endpoint competes from its first request.
//
// The counts live per endpoint address and identity, not per Destination,
// so they survive every destinations update.
const (
	// ejectMin and ejectMax bound how long an endpoint that failed to
	// connect is skipped: doubled on each consecutive failure.
	ejectMin = time.Second
	ejectMax = 30 * time.Second
	// statsIdle: statistics of an endpoint not picked for this long are
	// forgotten (it left the Service, or its pod is gone).
	statsIdle = 5 * time.Minute
)

// endpointKey names one endpoint: an address and the identity required of
// it (an address reused by another pod is another endpoint).
type endpointKey struct {
	addr netip.AddrPort
	id   spiffeid.ID
}

// endpointStats is what the balancer knows of one endpoint.
type endpointStats struct {
	pending atomic.Int64
	// lastUsed is unix nanoseconds of the last pick, for forgetting.
	lastUsed atomic.Int64
	// ejectedUntil is unix nanoseconds until which the endpoint is
	// skipped after a connect failure.
	ejectedUntil atomic.Int64
	// failures in a row, which lengthen the ejection.
	failures atomic.Int32
}

// balancer holds every endpoint's statistics.
type balancer struct {
	mu    sync.RWMutex
	stats map[endpointKey]*endpointStats
	now   func() time.Time
}

func newBalancer() *balancer {
	return &balancer{stats: map[endpointKey]*endpointStats{}, now: time.Now}
}

func (b *balancer) get(k endpointKey) *endpointStats {
	b.mu.RLock()
	s, ok := b.stats[k]
	b.mu.RUnlock()
	if ok {
		return s
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if s, ok = b.stats[k]; !ok {
		s = &endpointStats{}
		b.stats[k] = s
	}
	return s
}

// succeeded records an answer: the endpoint is no longer failing.
func (s *endpointStats) succeeded() {
	if s.failures.Load() != 0 {
		s.failures.Store(0)
		s.ejectedUntil.Store(0)
	}
}

// failed records a failure to connect: the endpoint is skipped for a
// while, longer each time in a row.
func (s *endpointStats) failed(now time.Time) {
	n := s.failures.Add(1)
	d := ejectMin << min(n-1, 5)
	s.ejectedUntil.Store(now.Add(min(d, ejectMax)).UnixNano())
}

// pick chooses one of eps, skipping those in skip and, while any other is
// left, those ejected. It returns false when nothing is left.
func (b *balancer) pick(eps []Endpoint, skip func(Endpoint) bool) (Endpoint, *endpointStats, bool) {
	now := b.now()
	nowNs := now.UnixNano()
	// Candidates: not skipped; ejected ones only if nothing else is.
	var live, ejected [8]int
	cand, out := live[:0], ejected[:0]
	for i, ep := range eps {
		if skip != nil && skip(ep) {
			continue
		}
		if b.get(keyOf(ep)).ejectedUntil.Load() > nowNs {
			out = append(out, i)
			continue
		}
		cand = append(cand, i)
	}
	if len(cand) == 0 {
		cand = out
	}
	var i int
	switch len(cand) {
	case 0:
		return Endpoint{}, nil, false
	case 1:
		i = cand[0]
	default:
		x := rand.IntN(len(cand))
		y := rand.IntN(len(cand) - 1)
		if y >= x {
			y++
		}
		a, c := cand[x], cand[y]
		if b.get(keyOf(eps[c])).pending.Load() < b.get(keyOf(eps[a])).pending.Load() {
			a = c
		}
		i = a
	}
	s := b.get(keyOf(eps[i]))
	s.lastUsed.Store(nowNs)
	return eps[i], s, true
}

func keyOf(ep Endpoint) endpointKey { return endpointKey{ep.Addr, ep.Identity} }

// forget drops the statistics of endpoints not picked for statsIdle and
// with nothing outstanding.
func (b *balancer) forget() {
	cut := b.now().Add(-statsIdle).UnixNano()
	b.mu.Lock()
	defer b.mu.Unlock()
	for k, s := range b.stats {
		if s.lastUsed.Load() < cut && s.pending.Load() == 0 {
			delete(b.stats, k)
		}
	}
}
