package client

import (
	"math/rand/v2"
	"testing"
	"time"
)

// TestBackoffBounds: every delay is within [min, max], and within the
// ceiling that doubles from 2×min after each failure and starts over after
// a reset. The expected ceiling is recomputed here step by step.
func TestBackoffBounds(t *testing.T) {
	for _, tc := range []struct {
		name     string
		min, max time.Duration
	}{
		{"defaults", 200 * time.Millisecond, 15 * time.Second},
		{"min equals max", time.Second, time.Second},
		{"max below twice min", 100 * time.Millisecond, 150 * time.Millisecond},
		{"nanoseconds", time.Nanosecond, 10 * time.Nanosecond},
		{"huge max", time.Millisecond, 1 << 62},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := newBackoff(tc.min, tc.max)
			b.int64N = rand.New(rand.NewPCG(1, 2)).Int64N
			ceiling := min(2*tc.min, tc.max)
			for i := range 5000 {
				if i%97 == 0 {
					b.reset()
					ceiling = min(2*tc.min, tc.max)
				}
				d := b.next()
				if d < tc.min || d > tc.max {
					t.Fatalf("draw %d: %s outside [%s, %s]", i, d, tc.min, tc.max)
				}
				if ceiling > tc.min && d >= ceiling {
					t.Fatalf("draw %d: %s at or above the ceiling %s", i, d, ceiling)
				}
				if ceiling == tc.min && d != tc.min {
					t.Fatalf("draw %d: %s, want exactly %s", i, d, tc.min)
				}
				if ceiling > tc.max/2 {
					ceiling = tc.max
				} else {
					ceiling *= 2
				}
			}
		})
	}
}

// TestBackoffJitter: proxies that lose their controller together do not
// retry together: first delays differ from one proxy to the next, and
// long-running delays spread over [min, max) rather than sit at max.
func TestBackoffJitter(t *testing.T) {
	const lo, hi = 200 * time.Millisecond, 15 * time.Second
	first := map[time.Duration]bool{}
	for range 100 {
		first[newBackoff(lo, hi).next()] = true
	}
	if len(first) < 90 {
		t.Fatalf("100 proxies drew only %d distinct first delays", len(first))
	}
	b := newBackoff(lo, hi)
	for range 20 {
		b.next()
	}
	var low, high int
	for range 1000 {
		if d := b.next(); d < hi/2 {
			low++
		} else {
			high++
		}
	}
	if low < 300 || high < 300 {
		t.Fatalf("saturated delays: %d below %s, %d above; want both about half", low, hi/2, high)
	}
}

// TestBackoffGrowsAndResets: repeated failures reach delays near max; a
// reset goes back to delays under 2×min.
func TestBackoffGrowsAndResets(t *testing.T) {
	const lo, hi = 10 * time.Millisecond, 10 * time.Second
	b := newBackoff(lo, hi)
	var longest time.Duration
	for range 40 {
		longest = max(longest, b.next())
	}
	if longest < hi/2 {
		t.Fatalf("after 40 failures the longest delay was %s, want above %s", longest, hi/2)
	}
	b.reset()
	if d := b.next(); d >= 2*lo {
		t.Fatalf("after a reset: %s, want under %s", d, 2*lo)
	}
}
