package authz

import (
	"errors"
	"fmt"
	"slices"
	"sort"
	"strconv"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/mesh-dev/mesh/internal/intorstr"
)

// DefaultMode is what happens to a request no ALLOW policy governs.
type DefaultMode string

// Default modes.
const (
	DefaultDeny               DefaultMode = "deny"
	DefaultAllowMesh          DefaultMode = "allow-mesh"
	DefaultAllowSameNamespace DefaultMode = "allow-same-namespace"
	DefaultAllowAll           DefaultMode = "allow-all"
)

// DefaultPolicyAnnotation overrides the mesh default for a namespace.
const DefaultPolicyAnnotation = "security.mesh.dev/default-policy"

// RootNamespace holds policies that apply mesh-wide.
const RootNamespace = "mesh-system"

// ParseDefaultMode checks a default mode's name.
func ParseDefaultMode(s string) (DefaultMode, error) {
	switch m := DefaultMode(s); m {
	case DefaultDeny, DefaultAllowMesh, DefaultAllowSameNamespace, DefaultAllowAll:
		return m, nil
	}
	return "", fmt.Errorf("authz: default policy %q is not one of deny, allow-mesh, allow-same-namespace, allow-all", s)
}

// Workload is the pod a table is compiled for.
type Workload struct {
	Namespace, Pod string
	Labels         map[string]string
	// Ports maps container port names to numbers, for rules that name ports.
	Ports map[string]uint16
	// NamespaceAnnotations are its namespace's annotations.
	NamespaceAnnotations map[string]string
}

// Input is everything a workload's table depends on.
type Input struct {
	TrustDomain spiffeid.TrustDomain
	// MeshDefault is the install-time default. Zero means allow-mesh.
	MeshDefault DefaultMode
	Workload    Workload
	// Policies may include any namespace's; those that do not apply to
	// the workload are ignored.
	Policies []Policy
}

// Table is one workload's compiled policy. It is immutable: a policy change
// compiles a new table, which the proxy swaps in atomically.
type Table struct {
	namespace, pod string
	trustDomain    string // "spiffe://<td>/"
	defaultMode    DefaultMode
	defaultPolicy  string // "default:<mode>"

	deny, allow, audit  ruleSet // enforced
	dryDeny, dryAllow   ruleSet
	hasAllow, hasDryRun bool
	// allowPolicy names the ALLOW policies in a "no rule matched" denial;
	// wouldAllowPolicy adds the dry-run ones.
	allowPolicy, wouldAllowPolicy string

	// httpAllPorts and httpPorts say where some rule has HTTP fields: on
	// those ports the proxy refuses a connection that is not HTTP instead
	// of deciding it once as opaque TCP (RequiresHTTP).
	httpAllPorts bool
	httpPorts    []uint16
	// warnings are rule parts that could not be compiled as written.
	warnings []string
	// applied are the policies that apply, in order.
	applied []Applied
}

// Applied names a policy a table was compiled from.
type Applied struct {
	Namespace, Name string
	Generation      int64
}

// Applied returns the policies that apply to the table's workload, sorted
// by namespace and name: what the proxy reports it enforces.
func (t *Table) Applied() []Applied { return slices.Clone(t.applied) }

// DefaultMode is what the table decides when no policy matches.
func (t *Table) DefaultMode() DefaultMode { return t.defaultMode }

// ruleSet indexes rules by the exact caller identities they name, so a
// table of thousands of identity rules is searched in one map lookup; the
// rules that need a scan (prefixes, namespaces, unauthenticated, any
// caller) are kept apart, in order.
type ruleSet struct {
	byID map[string][]ruleRef // by exact caller identity
	byNS map[string][]ruleRef // by caller namespace
	scan []ruleRef
	n    int
}

type ruleRef struct {
	order  int
	policy *policy
	rule   *rule
}

func (rs *ruleSet) add(p *policy, trustDomain string) {
	for i := range p.rules {
		r := &p.rules[i]
		ref := ruleRef{order: rs.n, policy: p, rule: r}
		rs.n++
		needScan := len(r.from) == 0
		for _, f := range r.from {
			switch {
			case len(f.namespaces) > 0:
				// Every caller this entry matches is in one of these
				// namespaces.
				rs.byNS = index(rs.byNS, f.namespaces, ref)
			case len(f.exact)+len(f.prefixes) > 0:
				// ... or is one of these IDs, or under one of these
				// prefixes; a prefix of a whole namespace is indexed by it.
				rs.byID = index(rs.byID, f.exact, ref)
				for _, pfx := range f.prefixes {
					if ns, ok := prefixNamespace(pfx, trustDomain); ok {
						rs.byNS = index(rs.byNS, []string{ns}, ref)
					} else {
						needScan = true
					}
				}
			default:
				needScan = true
			}
		}
		if needScan {
			rs.scan = append(rs.scan, ref)
		}
	}
}

type policy struct {
	name  string // <ns>/<name>
	rules []rule
}

type rule struct {
	name string // index, as a string, for decisions
	from []source
	to   []operation
}

type source struct {
	exact, prefixes  []string // identities
	namespaces, sas  []string
	unauthenticated  bool
	anyIdentityField bool
}

type operation struct {
	ports        []uint16
	portsSet     bool // ports named but none resolved: matches nothing
	methods      []string
	paths        []pathMatch
	httpRequired bool
	// failClosed is set on DENY rules: a request that is not HTTP matches
	// them on their ports alone, so HTTP fields never make a DENY weaker
	// for a connection the proxy could not read as HTTP.
	failClosed bool
}

type pathMatch struct {
	kind  byte // '=' exact, 'p' prefix, 's' suffix, '*' any
	value string
}

// Compile builds the table of the policies that apply to in.Workload:
// those of its namespace whose selector matches its labels, and those of
// the root namespace. A policy that fails validation is an error, and
// nothing is compiled.
func Compile(in Input) (*Table, error) {
	if in.TrustDomain.IsZero() {
		return nil, errors.New("authz: Input.TrustDomain is required")
	}
	mode := in.MeshDefault
	if mode == "" {
		mode = DefaultAllowMesh
	}
	if s, ok := in.Workload.NamespaceAnnotations[DefaultPolicyAnnotation]; ok {
		m, err := ParseDefaultMode(s)
		if err != nil {
			return nil, fmt.Errorf("authz: namespace %s annotation %s: %w", in.Workload.Namespace, DefaultPolicyAnnotation, err)
		}
		mode = m
	}
	t := &Table{
		namespace: in.Workload.Namespace, pod: in.Workload.Pod,
		trustDomain: in.TrustDomain.IDString() + "/",
		defaultMode: mode, defaultPolicy: "default:" + string(mode),
	}
	// A stable order, so decisions name the same policy every time.
	pols := append([]Policy(nil), in.Policies...)
	sort.Slice(pols, func(i, j int) bool {
		if pols[i].Namespace != pols[j].Namespace {
			return pols[i].Namespace < pols[j].Namespace
		}
		return pols[i].Name < pols[j].Name
	})
	for i := range pols {
		p := &pols[i]
		if p.Namespace != in.Workload.Namespace && p.Namespace != RootNamespace {
			continue
		}
		if errs := Validate(p); len(errs) > 0 {
			return nil, fmt.Errorf("authz: policy %s/%s: %w", p.Namespace, p.Name, errs.ToAggregate())
		}
		// Validate checked the selector as metav1.LabelSelectorAsSelector
		// does: what it accepts converts without error.
		if p.Spec.Selector != nil && !p.Spec.Selector.Matches(in.Workload.Labels) {
			continue
		}
		t.applied = append(t.applied, Applied{Namespace: p.Namespace, Name: p.Name, Generation: p.Generation})
		cp, warnings := compilePolicy(p, in.Workload.Ports)
		t.warnings = append(t.warnings, warnings...)
		if !p.Spec.DryRun && p.Spec.Action != Audit {
			// Only enforced policies change how a port is read: a dry-run
			// or AUDIT policy must never change a decision.
			t.noteHTTPPorts(cp)
		}
		switch {
		case p.Spec.Action == Audit:
			t.audit.add(cp, t.trustDomain)
		case p.Spec.DryRun && p.Spec.Action == Deny:
			t.dryDeny.add(cp, t.trustDomain)
		case p.Spec.DryRun:
			t.dryAllow.add(cp, t.trustDomain)
			t.wouldAllowPolicy = joinName(t.wouldAllowPolicy, cp.name)
		case p.Spec.Action == Deny:
			t.deny.add(cp, t.trustDomain)
		default:
			t.allow.add(cp, t.trustDomain)
			t.allowPolicy = joinName(t.allowPolicy, cp.name)
			t.wouldAllowPolicy = joinName(t.wouldAllowPolicy, cp.name)
			t.hasAllow = true
		}
		if p.Spec.DryRun && p.Spec.Action != Audit {
			t.hasDryRun = true
		}
	}
	return t, nil
}

// prefixNamespace recognises spiffe://<td>/ns/<ns>/ (a glob of a whole
// namespace).
func prefixNamespace(prefix, trustDomain string) (string, bool) {
	rest, ok := strings.CutPrefix(prefix, trustDomain+"ns/")
	if !ok {
		return "", false
	}
	ns, tail, ok := strings.Cut(rest, "/")
	return ns, ok && ns != "" && tail == ""
}

// index adds ref under each key, once.
func index(m map[string][]ruleRef, keys []string, ref ruleRef) map[string][]ruleRef {
	if m == nil {
		m = map[string][]ruleRef{}
	}
	for _, k := range keys {
		if l := m[k]; len(l) == 0 || l[len(l)-1].rule != ref.rule {
			m[k] = append(l, ref)
		}
	}
	return m
}

func joinName(list, name string) string {
	if list == "" {
		return name
	}
	return list + "," + name
}

func compilePolicy(p *Policy, ports map[string]uint16) (*policy, []string) {
	cp := &policy{name: p.Namespace + "/" + p.Name}
	deny := p.Spec.Action == Deny
	var warnings []string
	for i, r := range p.Spec.Rules {
		cr := rule{name: strconv.Itoa(i)}
		for _, s := range r.From {
			cs := source{namespaces: s.Namespaces, sas: s.ServiceAccounts, unauthenticated: s.Unauthenticated}
			for _, id := range s.Identities {
				if base, ok := strings.CutSuffix(id, "*"); ok {
					cs.prefixes = append(cs.prefixes, base)
				} else {
					cs.exact = append(cs.exact, id)
				}
			}
			cs.anyIdentityField = len(s.Identities)+len(s.Namespaces)+len(s.ServiceAccounts) > 0
			cr.from = append(cr.from, cs)
		}
		for j, o := range r.To {
			co := operation{methods: o.Methods, httpRequired: len(o.Methods)+len(o.Paths) > 0, failClosed: deny}
			unresolved := false
			for _, port := range o.Ports {
				co.portsSet = true
				if port.Type == intorstr.Int {
					co.ports = append(co.ports, uint16(port.IntVal))
				} else if n, ok := ports[port.StrVal]; ok {
					co.ports = append(co.ports, n)
				} else {
					unresolved = true
					w := fmt.Sprintf("policy %s rule %d to %d: the pod has no container port named %q", cp.name, i, j, port.StrVal)
					if deny {
						w += "; this DENY matches every port (fail closed)"
					} else {
						w += "; this port matches nothing"
					}
					warnings = append(warnings, w)
				}
			}
			if unresolved && deny {
				// A DENY the pod's spec cannot resolve must not quietly
				// stop denying: it covers every port instead.
				co.ports, co.portsSet = nil, false
			}
			for _, path := range o.Paths {
				switch {
				case path == "*":
					co.paths = append(co.paths, pathMatch{kind: '*'})
				case strings.HasSuffix(path, "*"):
					co.paths = append(co.paths, pathMatch{kind: 'p', value: strings.TrimSuffix(path, "*")})
				case strings.HasPrefix(path, "*"):
					co.paths = append(co.paths, pathMatch{kind: 's', value: strings.TrimPrefix(path, "*")})
				default:
					co.paths = append(co.paths, pathMatch{kind: '=', value: path})
				}
			}
			cr.to = append(cr.to, co)
		}
		cp.rules = append(cp.rules, cr)
	}
	return cp, warnings
}

// noteHTTPPorts records the ports on which p has rules with HTTP fields.
func (t *Table) noteHTTPPorts(p *policy) {
	for _, r := range p.rules {
		for _, o := range r.to {
			if !o.httpRequired {
				continue
			}
			if !o.portsSet {
				t.httpAllPorts = true
				continue
			}
			for _, port := range o.ports {
				if !slices.Contains(t.httpPorts, port) {
					t.httpPorts = append(t.httpPorts, port)
				}
			}
		}
	}
}

// RequiresHTTP reports whether some enforced rule of the table (ALLOW or
// DENY, not dry-run, not AUDIT) has HTTP fields (methods or paths) that
// apply to port. The proxy must then read every
// connection to port as HTTP and refuse one that is not, rather than fall
// back to deciding it once as opaque TCP.
func (t *Table) RequiresHTTP(port uint16) bool {
	return t.httpAllPorts || slices.Contains(t.httpPorts, port)
}

// Warnings lists the rule parts that could not be compiled as written, such
// as container port names the pod does not have, and what was done instead.
func (t *Table) Warnings() []string { return t.warnings }
