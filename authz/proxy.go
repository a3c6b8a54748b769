package authz

import (
	"sync"

	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

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

// WarningsMetric is a gauge of the warnings of the table in force (rule
// parts the workload cannot resolve, such as container port names it does
// not have), so that a policy that quietly does less than it says shows on
// a dashboard, not only in a log line.
func (e *Enforcer) WarningsMetric() prometheus.Collector {
	return prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "mesh_proxy_policy_warnings",
		Help: "Warnings of the policy table in force: rule parts the workload cannot resolve (see the proxy's log).",
	}, func() float64 {
		if t := e.table.Load(); t != nil {
			return float64(len(t.Warnings()))
		}
		return 0
	})
}

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
	out := proxy.Decision{Allow: d.Allow, Policy: d.Policy, Rule: d.Rule, Reason: d.Reason, Audit: d.Audit}
	if d.HasDryRun {
		out.DryRun = &proxy.Decision{Allow: d.DryRun.Allow, Policy: d.DryRun.Policy, Rule: d.DryRun.Rule, Reason: d.DryRun.Reason}
	}
	return out
}

// RequiresHTTP implements proxy.HTTPPolicy. Before the first table, every
// port does: nothing is allowed then anyway.
func (e *Enforcer) RequiresHTTP(port uint16) bool {
	t := e.table.Load()
	return t == nil || t.RequiresHTTP(port)
}

// Observe implements proxy.Observer: it writes the audit records of a
// finished request or connection (status 0 for opaque TCP), with d, the
// decision the proxy enforced, not a re-evaluation: the table may have
// changed since.
func (e *Enforcer) Observe(r *proxy.Request, d proxy.Decision, status int) {
	if e.Audit == nil {
		return
	}
	wouldDeny := d.DryRun != nil && !d.DryRun.Allow && d.Allow
	logged := !d.Allow || d.Audit != ""
	if !logged && !wouldDeny {
		if !e.LogAllows || (e.SampleAllows > 1 && e.allows.Add(1)%e.SampleAllows != 0) {
			return
		}
		logged = true
	}
	ns, pod := e.workload()
	base := audit.Record{
		Time: time.Now().UTC(), SourceIP: r.Source.Addr().String(),
		DestinationNamespace: ns, DestinationPod: pod, DestinationPort: r.DestinationPort,
		Protocol: r.Protocol, Audit: d.Audit,
	}
	if r.Authenticated {
		base.SourceIdentity = r.Peer.String()
	}
	if r.HTTP != nil {
		base.HTTPMethod, base.HTTPPath, base.HTTPStatus = r.HTTP.Method, r.HTTP.Path, status
	}
	if logged {
		rec := base
		rec.Decision, rec.Policy, rec.Rule, rec.Reason = decisionWord(d.Allow), d.Policy, d.Rule, d.Reason
		e.Audit.Write(rec)
	}
	if wouldDeny {
		// The dry-run would have denied what was allowed.
		rec := base
		rec.Decision, rec.DryRun, rec.Policy, rec.Rule, rec.Reason = "deny", true, d.DryRun.Policy, d.DryRun.Rule, d.DryRun.Reason
		e.Audit.Write(rec)
	}
}

// Refused implements proxy.RefusalObserver: connections and requests the
// proxy refused before any policy decision are audited too, so an auditor
// sees attempts, not only decisions.
func (e *Enforcer) Refused(r proxy.Refusal) {
	if e.Audit == nil {
		return
	}
	ns, pod := e.workload()
	rec := audit.Record{
		Time: time.Now().UTC(), Event: audit.EventRefused, Direction: r.Direction,
		Decision: "deny", Reason: r.Reason, Detail: r.Detail, Suppressed: r.Suppressed,
		DestinationNamespace: ns, DestinationPod: pod, DestinationPort: r.Destination.Port(),
	}
	if r.Source.IsValid() {
		rec.SourceIP = r.Source.Addr().String()
	}
	switch {
	case r.Direction == "outbound":
		// The local workload is the caller; the peer is who it tried to
		// reach, and what identity was expected there.
		rec.DestinationIP = r.Destination.Addr().String()
		if !r.Peer.IsZero() {
			rec.DestinationIdentity = r.Peer.String()
		}
	case !r.Peer.IsZero():
		rec.SourceIdentity = r.Peer.String()
	}
	e.Audit.Write(rec)
}

// workload names the table's workload, or nothing before the first table.
func (e *Enforcer) workload() (ns, pod string) {
	if t := e.table.Load(); t != nil {
		return t.namespace, t.pod
	}
	return "", ""
}

func decisionWord(allow bool) string {
	if allow {
		return "allow"
	}
	return "deny"
}
