// Package ration rations reports an attacker can cause at will (refused
// connections, throttled calls): a few a second get through, and the ones
// held back are counted, so the next report can say how many were left
// out. Nothing is lost silently and the log or audit trail cannot be
// flooded.
package ration

import (
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"
)

// Ration lets one report through every Every on average, in bursts of up
// to Burst.
type Ration struct {
	lim        *rate.Limiter
	suppressed atomic.Int64
}

// New returns a ration of one report every every, bursts of burst.
func New(every time.Duration, burst int) *Ration {
	return &Ration{lim: rate.NewLimiter(rate.Every(every), burst)}
}

// Allow reports whether a report may go out now, and, if so, how many
// were held back since the last one that did.
func (r *Ration) Allow() (bool, int64) {
	if !r.lim.Allow() {
		r.suppressed.Add(1)
		return false, 0
	}
	return true, r.suppressed.Swap(0)
}

// Keyed is one Ration per key, so that a flood of one kind of report does
// not hide the others. Keys must come from a small fixed set (reasons),
// never from peer input: each key is kept for good.
type Keyed struct {
	every time.Duration
	burst int
	mu    sync.Mutex
	keys  map[string]*Ration
}

// NewKeyed returns per-key rations of one report every every, bursts of
// burst.
func NewKeyed(every time.Duration, burst int) *Keyed {
	return &Keyed{every: every, burst: burst, keys: map[string]*Ration{}}
}

// Allow is Ration.Allow for key's ration.
func (k *Keyed) Allow(key string) (bool, int64) {
	k.mu.Lock()
	r := k.keys[key]
	if r == nil {
		r = New(k.every, k.burst)
		k.keys[key] = r
	}
	k.mu.Unlock()
	return r.Allow()
}
