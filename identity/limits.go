package identity

import (
	"context"
	"net"
	"net/netip"
	"sync"
	"time"

	"golang.org/x/time/rate"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
)

// Defaults for the limits the service applies before it spends a
// TokenReview on a caller. A TokenReview is a request to the API server
// that anyone who can reach the identity port can trigger with a token
// that is never valid, so it is rationed per source and in total.
const (
	// DefaultRatePerSource and DefaultBurstPerSource bound Certify calls
	// per source address. A pod renews about every half hour, so an honest
	// address needs a small fraction of a call a second; a node that starts
	// ~100 pods at once behind one address (SNAT, hostNetwork) needs a
	// burst. 5/s with a burst of 50 serves such a start within ~10 s and
	// holds one address in a loop or an attack to 5 reviews a second.
	DefaultRatePerSource  = rate.Limit(5)
	DefaultBurstPerSource = 50
	// DefaultMaxSources caps the addresses tracked at once. An entry is
	// forgotten once its bucket would be full again (burst/rate: 10 s with
	// the defaults), so only addresses seen in the last seconds count:
	// 150,000 pods renewing every half hour are ~80 addresses a second.
	// Past the cap new addresses share one overflow bucket, so a spray of
	// source addresses is slowed down, not let through.
	DefaultMaxSources = 10000
	// DefaultMaxConcurrentReviews caps the attestations (TokenReview and
	// pod read) in flight, so callers from many addresses at once cannot
	// queue unbounded work on the API server.
	DefaultMaxConcurrentReviews = 32
	// DefaultReviewWait is how long a call waits for a review slot before
	// it is refused: short, since proxies retry with backoff and a long
	// queue only holds connections open.
	DefaultReviewWait = time.Second
)

// reviewTimeout bounds one attestation, so a slow API server cannot hold
// a review slot for longer than a caller without a deadline would wait.
const reviewTimeout = 10 * time.Second

// Reasons of mesh_identity_requests_refused_total.
const (
	refusedSource   = "rate_limited_source"
	refusedOverflow = "rate_limited_overflow"
	refusedCapacity = "review_capacity"
	refusedPod      = "rate_limited_pod"
)

// sourceLimiter is a token bucket per source address, with a bounded
// number of addresses and one shared bucket past the bound.
type sourceLimiter struct {
	limit rate.Limit
	burst int
	max   int
	// idle is how long an entry goes unused before its bucket is full
	// again: forgetting it then loses nothing.
	idle time.Duration

	mu        sync.Mutex
	buckets   map[netip.Addr]*limiter
	overflow  *rate.Limiter
	lastSweep time.Time
}

func newSourceLimiter(limit rate.Limit, burst, max int) *sourceLimiter {
	idle := time.Second
	if limit != rate.Inf && limit > 0 {
		if d := time.Duration(float64(burst) / float64(limit) * float64(time.Second)); d > idle {
			idle = d
		}
	}
	return &sourceLimiter{
		limit: limit, burst: burst, max: max, idle: idle,
		buckets:  make(map[netip.Addr]*limiter),
		overflow: rate.NewLimiter(limit, burst),
	}
}

// allow reports whether src may make one more call at now, and which
// reason refuses it if not.
func (l *sourceLimiter) allow(src netip.Addr, now time.Time) (ok bool, reason string) {
	if l.limit == rate.Inf {
		return true, ""
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	b, found := l.buckets[src]
	if !found {
		if len(l.buckets) >= l.max {
			l.sweepLocked(now)
		}
		if len(l.buckets) >= l.max {
			// Fail closed: an address that finds no room is rationed
			// with every other such address.
			if l.overflow.AllowN(now, 1) {
				return true, ""
			}
			return false, refusedOverflow
		}
		b = &limiter{Limiter: rate.NewLimiter(l.limit, l.burst)}
		l.buckets[src] = b
	}
	b.last = now
	if b.AllowN(now, 1) {
		return true, ""
	}
	return false, refusedSource
}

// tracked is the number of addresses with their own bucket.
func (l *sourceLimiter) tracked() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.buckets)
}

// sweepLocked forgets addresses idle long enough to have a full bucket.
// It runs at most once a second, so a spray of new addresses against a
// full table costs one scan a second rather than one per call.
func (l *sourceLimiter) sweepLocked(now time.Time) {
	if !l.lastSweep.IsZero() && now.Sub(l.lastSweep) < time.Second {
		return
	}
	l.lastSweep = now
	for k, b := range l.buckets {
		if now.Sub(b.last) >= l.idle {
			delete(l.buckets, k)
		}
	}
}

// sourceAddr is the caller's IP address with any IPv4-mapped form unmapped
// and any zone dropped, so one host is one key however it connects.
// Callers without an IP address (a Unix socket, an in-process call) all
// share the zero address, and so one bucket.
func sourceAddr(ctx context.Context) netip.Addr {
	p, ok := peer.FromContext(ctx)
	if !ok || p.Addr == nil {
		return netip.Addr{}
	}
	var a netip.Addr
	switch pa := p.Addr.(type) {
	case *net.TCPAddr:
		a, ok = netip.AddrFromSlice(pa.IP)
	default:
		ap, err := netip.ParseAddrPort(pa.String())
		a, ok = ap.Addr(), err == nil
	}
	if !ok {
		return netip.Addr{}
	}
	return a.Unmap().WithZone("")
}

// reviewSlots is a semaphore of attestations in flight.
type reviewSlots struct {
	slots chan struct{}
	wait  time.Duration
}

func newReviewSlots(n int, wait time.Duration) *reviewSlots {
	return &reviewSlots{slots: make(chan struct{}, n), wait: wait}
}

// acquire takes a slot, waiting at most r.wait and no longer than ctx
// allows. The returned function gives the slot back.
func (r *reviewSlots) acquire(ctx context.Context) (release func(), err error) {
	release = func() { <-r.slots }
	select {
	case r.slots <- struct{}{}:
		return release, nil
	default:
	}
	t := time.NewTimer(r.wait)
	defer t.Stop()
	select {
	case r.slots <- struct{}{}:
		return release, nil
	case <-t.C:
		return nil, status.Errorf(codes.ResourceExhausted, "identity: %d token reviews already in flight, none finished within %v; retry later", cap(r.slots), r.wait)
	case <-ctx.Done():
		return nil, status.FromContextError(ctx.Err()).Err()
	}
}
