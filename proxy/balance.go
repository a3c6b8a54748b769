package proxy

import (
	"math"
	"math/rand/v2"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Load balancing: power of two choices over a peak-EWMA latency estimate
// (tower's PeakEwma, which Linkerd's proxy uses; DESIGN-NOTES §9). Each
// choice costs the endpoint's estimated latency times its outstanding
// requests plus one, so a slow endpoint and a busy one both lose, and one
// that has failed to connect is left out for a while.
//
// The statistics live per endpoint address and identity, not per
// Destination, so they survive every destinations update: an endpoint
// that stays ready keeps its estimate, and one that becomes ready starts
// from defaultRTT, which decays towards what is measured.
const (
	// defaultRTT is a new endpoint's estimate. Low enough that a new pod
	// is tried soon (a high default starved new endpoints in tower, PR
	// #134), high enough that it does not take all the traffic at once.
	defaultRTT = 30 * time.Millisecond
	// decay is how fast a faster measurement pulls the estimate down; a
	// slower one replaces it at once (the "peak").
	decay = 10 * time.Second
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

	mu       sync.Mutex
	rtt      float64 // nanoseconds
	stamp    time.Time
	failures int
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
		s = &endpointStats{rtt: float64(defaultRTT), stamp: b.now()}
		b.stats[k] = s
	}
	return s
}

// cost is the estimated latency times the outstanding requests plus one,
// with the estimate decayed to now.
func (s *endpointStats) cost(now time.Time) float64 {
	s.mu.Lock()
	rtt := s.decayed(now)
	s.mu.Unlock()
	return rtt * float64(s.pending.Load()+1)
}

// decayed moves the estimate towards zero for the time since the last
// measurement, so an endpoint that was slow once is tried again. Called
// with mu held.
func (s *endpointStats) decayed(now time.Time) float64 {
	elapsed := now.Sub(s.stamp)
	if elapsed <= 0 {
		return s.rtt
	}
	return s.rtt * math.Exp(-float64(elapsed)/float64(decay))
}

// observe records a measured latency (to the response's headers).
func (s *endpointStats) observe(now time.Time, rtt time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	prev := s.decayed(now)
	if r := float64(rtt); r > prev {
		s.rtt = r
	} else {
		w := math.Exp(-float64(now.Sub(s.stamp)) / float64(decay))
		s.rtt = prev*w + r*(1-w)
	}
	s.stamp = now
	s.failures = 0
	s.ejectedUntil.Store(0)
}

// failed records a failure to connect: the endpoint is skipped for a
// while, longer each time in a row.
func (s *endpointStats) failed(now time.Time) {
	s.mu.Lock()
	d := ejectMin << min(s.failures, 5)
	s.failures++
	s.mu.Unlock()
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
		if b.get(keyOf(eps[c])).cost(now) < b.get(keyOf(eps[a])).cost(now) {
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
