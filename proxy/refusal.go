package proxy

import (
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// refusalLimiter bounds the audit records of refusals: an attacker can
// cause refusals as fast as it can open connections, and each record is a
// write on the node. Each reason gets a few records a second; the ones
// suppressed are counted and the count rides on the next record.
type refusalLimiter struct {
	mu      sync.Mutex
	reasons map[string]*refusalBucket
}

type refusalBucket struct {
	lim        *rate.Limiter
	suppressed int64
}

// allow reports whether a refusal of reason is recorded now, and how many
// were suppressed before it.
func (l *refusalLimiter) allow(reason string) (bool, int64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.reasons == nil {
		l.reasons = map[string]*refusalBucket{}
	}
	b := l.reasons[reason]
	if b == nil {
		b = &refusalBucket{lim: rate.NewLimiter(rate.Every(200*time.Millisecond), 10)}
		l.reasons[reason] = b
	}
	if !b.lim.Allow() {
		b.suppressed++
		return false, 0
	}
	n := b.suppressed
	b.suppressed = 0
	return true, n
}

// audit reports a refusal to the Authorizer's RefusalObserver, if any,
// rate-limited per reason. Reasons are a fixed set of words, so the map
// stays small.
func (p *Proxy) audit(r Refusal) {
	o, ok := p.cfg.Authorizer.(RefusalObserver)
	if !ok {
		return
	}
	ok, n := p.audited.allow(r.Direction + "/" + r.Reason)
	if !ok {
		return
	}
	r.Suppressed = n
	o.Refused(r)
}
