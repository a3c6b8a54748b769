package authz

import (
	"slices"
	"strings"
)

// Request is one connection or HTTP request to the table's workload.
type Request struct {
	// Peer is the caller's verified SPIFFE ID; empty when unauthenticated.
	Peer string
	// Port is the destination port.
	Port uint16
	// HTTP is set for HTTP requests, with Method and Path.
	HTTP         bool
	Method, Path string
}

// Decision is the verdict on a request.
type Decision struct {
	Allow bool
	// Policy is <namespace>/<name> of the deciding policy, the list of
	// ALLOW policies when none of their rules matched, or default:<mode>.
	Policy string
	// Rule is the index of the deciding rule in its policy, or "".
	Rule string
	// Reason says why, for the caller, the logs and the audit trail.
	Reason string
	// Audit names the first AUDIT policy that matched, if any.
	Audit string
	// DryRun, when HasDryRun, is what the decision would be were the
	// dry-run policies enforced.
	HasDryRun bool
	DryRun    struct {
		Allow                bool
		Policy, Rule, Reason string
	}
}

// Reasons.
const (
	ReasonDenyRule     = "matched a DENY rule"
	ReasonAllowRule    = "matched an ALLOW rule"
	ReasonNoAllowRule  = "no ALLOW rule matched"
	ReasonDefaultDeny  = "default deny"
	ReasonDefaultAllow = "allowed by the default"
	ReasonNotMesh      = "the caller is not a mesh identity"
	ReasonNotSameNS    = "the caller is not in the workload's namespace"
	ReasonNoPolicy     = "the proxy has no policy yet"
)

// Evaluate decides req. It is a pure function of the table and the request
// and does not allocate.
func (t *Table) Evaluate(req *Request) Decision {
	var d Decision
	d.Allow, d.Policy, d.Rule, d.Reason = t.decide(req, &t.deny, &none, &t.allow, &none, t.hasAllow, t.allowPolicy)
	if ref, ok := t.audit.first(t, req); ok {
		d.Audit = ref.policy.name
	}
	if t.hasDryRun {
		// The would-be world: dry-run policies count as enforced.
		d.HasDryRun = true
		d.DryRun.Allow, d.DryRun.Policy, d.DryRun.Rule, d.DryRun.Reason = t.decide(req,
			&t.deny, &t.dryDeny, &t.allow, &t.dryAllow, t.hasAllow || t.dryAllow.n > 0, t.wouldAllowPolicy)
	}
	return d
}

// none is an empty rule set.
var none ruleSet

// decide applies the precedence to DENY rules (two sets) and ALLOW rules
// (two sets).
func (t *Table) decide(req *Request, deny1, deny2, allow1, allow2 *ruleSet, hasAllow bool, allowPolicy string) (bool, string, string, string) {
	if ref, ok := deny1.first(t, req); ok {
		return false, ref.policy.name, ref.rule.name, ReasonDenyRule
	}
	if ref, ok := deny2.first(t, req); ok {
		return false, ref.policy.name, ref.rule.name, ReasonDenyRule
	}
	if hasAllow {
		if ref, ok := allow1.first(t, req); ok {
			return true, ref.policy.name, ref.rule.name, ReasonAllowRule
		}
		if ref, ok := allow2.first(t, req); ok {
			return true, ref.policy.name, ref.rule.name, ReasonAllowRule
		}
		return false, allowPolicy, "", ReasonNoAllowRule
	}
	switch t.defaultMode {
	case DefaultAllowAll:
		return true, t.defaultPolicy, "", ReasonDefaultAllow
	case DefaultAllowMesh:
		if t.inMesh(req.Peer) {
			return true, t.defaultPolicy, "", ReasonDefaultAllow
		}
		return false, t.defaultPolicy, "", ReasonNotMesh
	case DefaultAllowSameNamespace:
		if ns, _, ok := t.parse(req.Peer); ok && ns == t.namespace {
			return true, t.defaultPolicy, "", ReasonDefaultAllow
		}
		return false, t.defaultPolicy, "", ReasonNotSameNS
	}
	return false, t.defaultPolicy, "", ReasonDefaultDeny
}

// first finds the matching rule that comes first in policy order.
func (rs *ruleSet) first(t *Table, req *Request) (ruleRef, bool) {
	var best ruleRef
	found := false
	try := func(refs []ruleRef) {
		for _, ref := range refs {
			if found && ref.order > best.order {
				return
			}
			if t.matchRule(ref.rule, req) {
				best, found = ref, true
				return
			}
		}
	}
	if req.Peer != "" {
		if rs.byID != nil {
			try(rs.byID[req.Peer])
		}
		if rs.byNS != nil {
			if ns, _, ok := t.parse(req.Peer); ok {
				try(rs.byNS[ns])
			}
		}
	}
	try(rs.scan)
	return best, found
}

func (t *Table) matchRule(r *rule, req *Request) bool {
	if len(r.from) > 0 {
		ok := false
		for i := range r.from {
			if t.matchSource(&r.from[i], req.Peer) {
				ok = true
				break
			}
		}
		if !ok {
			return false
		}
	}
	if len(r.to) == 0 {
		return true
	}
	for i := range r.to {
		if matchOperation(&r.to[i], req) {
			return true
		}
	}
	return false
}

func (t *Table) matchSource(s *source, peer string) bool {
	if s.unauthenticated {
		return peer == ""
	}
	if peer == "" {
		return false
	}
	if len(s.exact)+len(s.prefixes) > 0 {
		ok := false
		for _, id := range s.exact {
			if id == peer {
				ok = true
				break
			}
		}
		for _, p := range s.prefixes {
			if !ok && strings.HasPrefix(peer, p) {
				ok = true
			}
		}
		if !ok {
			return false
		}
	}
	if len(s.namespaces)+len(s.sas) > 0 {
		ns, sa, ok := t.parse(peer)
		if !ok {
			return false
		}
		if len(s.namespaces) > 0 && !slices.Contains(s.namespaces, ns) {
			return false
		}
		if len(s.sas) > 0 && !slices.Contains(s.sas, sa) {
			return false
		}
	}
	return true
}

func matchOperation(o *operation, req *Request) bool {
	if o.portsSet && !slices.Contains(o.ports, req.Port) {
		return false
	}
	if o.httpRequired && !req.HTTP {
		// A connection that is not HTTP has no method or path: an ALLOW
		// (or AUDIT) naming them does not match it, a DENY does.
		return o.failClosed
	}
	if len(o.methods) > 0 && !slices.Contains(o.methods, req.Method) {
		return false
	}
	if len(o.paths) > 0 {
		ok := false
		for _, p := range o.paths {
			switch p.kind {
			case '*':
				ok = true
			case 'p':
				ok = strings.HasPrefix(req.Path, p.value)
			case 's':
				ok = strings.HasSuffix(req.Path, p.value)
			default:
				ok = req.Path == p.value
			}
			if ok {
				break
			}
		}
		if !ok {
			return false
		}
	}
	return true
}

// inMesh reports whether peer is an identity of our trust domain.
func (t *Table) inMesh(peer string) bool { return strings.HasPrefix(peer, t.trustDomain) }

// parse splits spiffe://<td>/ns/<ns>/sa/<sa> of our trust domain without
// allocating.
func (t *Table) parse(peer string) (ns, sa string, ok bool) {
	rest, ok := strings.CutPrefix(peer, t.trustDomain)
	if !ok {
		return "", "", false
	}
	rest, ok = strings.CutPrefix(rest, "ns/")
	if !ok {
		return "", "", false
	}
	ns, rest, ok = strings.Cut(rest, "/")
	if !ok {
		return "", "", false
	}
	sa, ok = strings.CutPrefix(rest, "sa/")
	if !ok || ns == "" || sa == "" || strings.Contains(sa, "/") {
		return "", "", false
	}
	return ns, sa, true
}
