package authz

import (
	"sync"
	"sync/atomic"
	"time"

	"github.com/mesh-dev/mesh/authz/audit"
	"github.com/mesh-dev/mesh/proxy"
)

// Enforcer decides a proxy's inbound requests with the workload's current
// table, and writes their audit records. It implements proxy.Authorizer and
// proxy.Observer. Tables are swapped atomically: a policy change applies
// to the next request at once.
type Enforcer struct {
	table   atomic.Pointer[Table]
	mu      sync.Mutex
	updated chan struct{}
	// Audit receives records; nil means none are written.
	Audit *audit.Writer
	// LogAllows also audits allowed requests, one in SampleAllows of them
	// (zero or one: all).
	LogAllows    bool
	SampleAllows uint64
	allows       atomic.Uint64
}

// NewEnforcer returns an enforcer, with a first table or none (nil): until
// it has one it denies everything and the proxy is not ready.
func NewEnforcer(t *Table, w *audit.Writer) *Enforcer {
	e := &Enforcer{Audit: w, updated: make(chan struct{})}
	if t != nil {
		e.table.Store(t)
	}
	return e
}

// Swap installs a new table for the next requests, and tells the proxy to
// re-decide its open TCP connections.
func (e *Enforcer) Swap(t *Table) {
	e.table.Store(t)
	e.mu.Lock()
	close(e.updated)
	e.updated = make(chan struct{})
	e.mu.Unlock()
}

// Updated implements proxy.Notifier.
func (e *Enforcer) Updated() <-chan struct{} {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.updated
}

// Ready implements proxy.Readier: ready once a table is in force.
func (e *Enforcer) Ready() bool { return e.table.Load() != nil }

// Table is the table in force.
func (e *Enforcer) Table() *Table { return e.table.Load() }

func toRequest(r *proxy.Request) Request {
	q := Request{Port: r.DestinationPort}
	if r.Authenticated {
		q.Peer = r.Peer.String()
	}
	if r.HTTP != nil {
		q.HTTP, q.Method, q.Path = true, r.HTTP.Method, r.HTTP.Path
	}
	return q
}

// Authorize implements proxy.Authorizer.
func (e *Enforcer) Authorize(r *proxy.Request) proxy.Decision {
	t := e.table.Load()
	if t == nil {
		return proxy.Decision{Policy: "none", Reason: ReasonNoPolicy}
	}
	q := toRequest(r)
	d := t.Evaluate(&q)
	return proxy.Decision{Allow: d.Allow, Policy: d.Policy, Rule: d.Rule, Reason: d.Reason}
}

// Observe implements proxy.Observer: it writes the audit records of a
// finished request or connection (status 0 for opaque TCP). It re-evaluates
// the request, which costs tens of nanoseconds and keeps Authorize free of
// state.
func (e *Enforcer) Observe(r *proxy.Request, _ proxy.Decision, status int) {
	if e.Audit == nil {
		return
	}
	t := e.table.Load()
	if t == nil {
		return
	}
	q := toRequest(r)
	d := t.Evaluate(&q)
	base := audit.Record{
		Time: time.Now().UTC(), SourceIP: r.Source.Addr().String(),
		DestinationNamespace: t.namespace, DestinationPod: t.pod, DestinationPort: r.DestinationPort,
		Protocol: r.Protocol, Audit: d.Audit,
	}
	if r.Authenticated {
		base.SourceIdentity = r.Peer.String()
	}
	if r.HTTP != nil {
		base.HTTPMethod, base.HTTPPath, base.HTTPStatus = r.HTTP.Method, r.HTTP.Path, status
	}
	write := func(allow, dry bool, policy, rule, reason string) {
		rec := base
		rec.Decision, rec.DryRun, rec.Policy, rec.Rule, rec.Reason = decisionWord(allow), dry, policy, rule, reason
		e.Audit.Write(rec)
	}
	switch {
	case !d.Allow, d.Audit != "":
		write(d.Allow, false, d.Policy, d.Rule, d.Reason)
	case e.LogAllows && (e.SampleAllows <= 1 || e.allows.Add(1)%e.SampleAllows == 0):
		write(true, false, d.Policy, d.Rule, d.Reason)
	}
	if d.HasDryRun && !d.DryRun.Allow && d.Allow {
		// The dry-run would have denied what was allowed.
		write(false, true, d.DryRun.Policy, d.DryRun.Rule, d.DryRun.Reason)
	}
}

func decisionWord(allow bool) string {
	if allow {
		return "allow"
	}
	return "deny"
}
