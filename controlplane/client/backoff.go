package client

import (
	"math/rand/v2"
	"time"
)

// backoff is the delay before a watch reconnects: drawn uniformly from
// [min, ceiling), where the ceiling starts at twice min and doubles after
// every failure up to max. The draw is jittered from the first retry on, so
// the proxies that lost one controller replica at the same moment do not
// all reconnect to the next in step; min keeps a failing controller from
// being hammered in a tight loop.
type backoff struct {
	min, max time.Duration
	ceiling  time.Duration
	// int64N draws in [0, n); rand.Int64N in production, a seeded
	// generator in tests.
	int64N func(n int64) int64
}

func newBackoff(lo, hi time.Duration) *backoff {
	b := &backoff{min: lo, max: hi, int64N: rand.Int64N}
	b.reset()
	return b
}

// next returns the delay before the next attempt and raises the ceiling
// for the one after.
func (b *backoff) next() time.Duration {
	d := b.min
	if span := b.ceiling - b.min; span > 0 {
		d += time.Duration(b.int64N(int64(span)))
	}
	if b.ceiling <= b.max/2 {
		b.ceiling *= 2
	} else {
		b.ceiling = b.max
	}
	return d
}

// reset starts over from the shortest delays: a stream that delivered a
// message was healthy, so its end is a new incident.
func (b *backoff) reset() {
	b.ceiling = min(2*b.min, b.max)
}
