package inventory

import "sync"

// Kind is what a Subscription watches.
type Kind int

// Kinds.
const (
	WatchDestinations Kind = iota
	WatchPolicy
)

// Subscription is one stream's interest in the inventory. Informer
// handlers mark it (a set of changed addresses, or a flag) and wake it
// without blocking; the stream takes what changed when it is ready to
// send, so changes coalesce for a slow reader and no queue grows.
type Subscription struct {
	inv     *Inventory
	kind    Kind
	ns, pod string

	mu     sync.Mutex
	dests  map[string]struct{}
	policy bool
	wake   chan struct{}
}

// Subscribe registers a subscription for pod ns/pod. Subscribe before
// reading the first snapshot, so that no change in between is lost.
func (inv *Inventory) Subscribe(kind Kind, ns, pod string) *Subscription {
	s := &Subscription{inv: inv, kind: kind, ns: ns, pod: pod, dests: map[string]struct{}{}, wake: make(chan struct{}, 1)}
	inv.mu.Lock()
	inv.subs[s] = struct{}{}
	inv.mu.Unlock()
	return s
}

// Close ends the subscription.
func (s *Subscription) Close() {
	s.inv.mu.Lock()
	delete(s.inv.subs, s)
	s.inv.mu.Unlock()
}

// Wake receives when something changed since the last Take.
func (s *Subscription) Wake() <-chan struct{} { return s.wake }

// TakeDestinations returns the addresses changed since the last call.
func (s *Subscription) TakeDestinations() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	keys := make([]string, 0, len(s.dests))
	for k := range s.dests {
		keys = append(keys, k)
	}
	clear(s.dests)
	return keys
}

// TakePolicy reports whether the policy may have changed since the last
// call.
func (s *Subscription) TakePolicy() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	p := s.policy
	s.policy = false
	return p
}

// Pending is how many changes wait to be taken.
func (s *Subscription) Pending() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.policy {
		return len(s.dests) + 1
	}
	return len(s.dests)
}

func (s *Subscription) markDestinations(keys []string) {
	if s.kind != WatchDestinations || len(keys) == 0 {
		return
	}
	s.mu.Lock()
	for _, k := range keys {
		s.dests[k] = struct{}{}
	}
	s.mu.Unlock()
	s.signal()
}

func (s *Subscription) markPolicy() {
	s.mu.Lock()
	s.policy = true
	s.mu.Unlock()
	s.signal()
}

func (s *Subscription) signal() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// policyChanged marks the policy subscriptions a change may affect: one
// pod's (ns, pod), a namespace's (ns, ""), or every one ("", "").
func (inv *Inventory) policyChanged(ns, pod string) {
	inv.mu.RLock()
	defer inv.mu.RUnlock()
	for s := range inv.subs {
		if s.kind == WatchPolicy && (ns == "" || s.ns == ns && (pod == "" || s.pod == pod)) {
			s.markPolicy()
		}
	}
}
