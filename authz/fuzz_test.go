package authz_test

import (
	"testing"

	"sigs.k8s.io/yaml"

	"github.com/mesh-dev/mesh/authz"
	"github.com/mesh-dev/mesh/internal/intorstr"
)

// gen turns fuzz bytes into policies and a request over a small universe,
// so that matches are frequent.
type gen struct{ b []byte }

func (g *gen) next() int {
	if len(g.b) == 0 {
		return 0
	}
	v := int(g.b[0])
	g.b = g.b[1:]
	return v
}

func (g *gen) pick(list []string) string { return list[g.next()%len(list)] }

var (
	fuzzIDs = []string{frontend, opsJob, prometheus, grafana, shopOther, foreign, "spiffe://cluster.local/ns/ops/*", "spiffe://cluster.local/*"}
	fuzzNS  = []string{"shop", "ops", "monitoring"}
	fuzzSA  = []string{"frontend", "job", "prometheus"}
	fuzzPth = []string{"/api/*", "/healthz", "*.png", "*", "/x"}
	fuzzMet = []string{"GET", "POST", "DELETE"}
	peers   = []string{frontend, opsJob, prometheus, grafana, shopOther, foreign, ""}
)

func (g *gen) policies() []authz.Policy {
	var out []authz.Policy
	for i := range g.next() % 6 {
		p := authz.Policy{ObjectMeta: authz.ObjectMeta{Name: string(rune('a' + i)), Namespace: []string{"shop", "mesh-system"}[g.next()%2]}}
		p.Spec.Action = []authz.Action{authz.Allow, authz.Deny, authz.Audit}[g.next()%3]
		p.Spec.DryRun = g.next()%4 == 0
		for range 1 + g.next()%3 {
			var r authz.Rule
			for range g.next() % 3 {
				var s authz.Source
				switch g.next() % 4 {
				case 0:
					s.Identities = []string{g.pick(fuzzIDs)}
				case 1:
					s.Namespaces = []string{g.pick(fuzzNS)}
				case 2:
					s.Namespaces, s.ServiceAccounts = []string{g.pick(fuzzNS)}, []string{g.pick(fuzzSA)}
				default:
					s.Unauthenticated = true
				}
				r.From = append(r.From, s)
			}
			for range g.next() % 3 {
				var o authz.Operation
				if g.next()%2 == 0 {
					o.Ports = []intorstr.IntOrString{intorstr.FromInt32(int32(8080 + g.next()%2))}
				} else {
					o.Methods, o.Paths = []string{g.pick(fuzzMet)}, []string{g.pick(fuzzPth)}
				}
				r.To = append(r.To, o)
			}
			p.Spec.Rules = append(p.Spec.Rules, r)
		}
		if len(authz.Validate(&p)) == 0 {
			out = append(out, p)
		}
	}
	return out
}

func without(ps []authz.Policy, drop func(*authz.Policy) bool) []authz.Policy {
	var out []authz.Policy
	for i := range ps {
		if !drop(&ps[i]) {
			out = append(out, ps[i])
		}
	}
	return out
}

// FuzzEvaluate checks the precedence invariants on random policy sets and
// requests: a matching enforced DENY always denies; with no enforced ALLOW
// policy and the deny default everything is denied; dry-run and AUDIT
// policies never change the decision.
func FuzzEvaluate(f *testing.F) {
	f.Add([]byte{3, 1, 1, 0, 2, 1, 0, 0, 1, 1, 5, 2, 0, 1, 3, 0, 0, 2})
	f.Add([]byte{5, 0, 0, 1, 0, 0, 1, 1, 0, 2, 3, 1, 0, 2, 1, 1, 1, 1, 2, 2, 2})
	f.Fuzz(func(t *testing.T, b []byte) {
		g := &gen{b: b}
		ps := g.policies()
		mode := []authz.DefaultMode{authz.DefaultDeny, authz.DefaultAllowMesh, authz.DefaultAllowSameNamespace, authz.DefaultAllowAll}[g.next()%4]
		req := &authz.Request{Peer: peers[g.next()%len(peers)], Port: uint16(8080 + g.next()%2)}
		if g.next()%2 == 0 {
			req.HTTP, req.Method, req.Path = true, g.pick(fuzzMet), []string{"/api/v1", "/healthz", "/img.png", "/x", "/"}[g.next()%5]
		}
		eval := func(ps []authz.Policy, mode authz.DefaultMode) authz.Decision {
			tbl, err := authz.Compile(authz.Input{TrustDomain: td, MeshDefault: mode, Workload: backend(nil), Policies: ps})
			if err != nil {
				t.Fatalf("valid policies did not compile: %v", err)
			}
			return tbl.Evaluate(req)
		}
		d := eval(ps, mode)

		// Deny wins: any enforced DENY policy matching alone denies all.
		for _, p := range ps {
			if p.Spec.Action != authz.Deny || p.Spec.DryRun {
				continue
			}
			if alone := eval([]authz.Policy{p}, authz.DefaultAllowAll); !alone.Allow && d.Allow {
				t.Fatalf("DENY %s matches %+v alone, but the full set allows (%+v)", p.Name, req, d)
			}
		}
		// No enforced ALLOW + deny default: everything denied.
		noAllow := without(ps, func(p *authz.Policy) bool { return p.Spec.Action == authz.Allow && !p.Spec.DryRun })
		if got := eval(noAllow, authz.DefaultDeny); got.Allow {
			t.Fatalf("no ALLOW policy and the deny default allowed %+v: %+v", req, got)
		}
		// Dry-run and AUDIT never change the decision.
		enforced := without(ps, func(p *authz.Policy) bool { return p.Spec.DryRun || p.Spec.Action == authz.Audit })
		if e := eval(enforced, mode); e.Allow != d.Allow || e.Policy != d.Policy || e.Rule != d.Rule || e.Reason != d.Reason {
			t.Fatalf("dry-run or AUDIT policies changed the decision: %+v without them, %+v with", e, d)
		}
	})
}

// FuzzValidateCompile feeds arbitrary policy YAML: parsing and validation
// never panic, and a policy that validates always compiles.
func FuzzValidateCompile(f *testing.F) {
	f.Add([]byte(issueExample))
	f.Add([]byte("spec: {action: DENY, rules: [{to: [{paths: ['*']}]}]}"))
	f.Add([]byte("spec: {action: ALLOW, rules: [{from: [{identities: ['spiffe://x/*/y']}]}]}"))
	f.Fuzz(func(t *testing.T, b []byte) {
		var p authz.Policy
		if yaml.Unmarshal(b, &p) != nil {
			return
		}
		p.Namespace = "shop"
		if len(authz.Validate(&p)) > 0 {
			return
		}
		if _, err := authz.Compile(authz.Input{TrustDomain: td, Workload: backend(nil), Policies: []authz.Policy{p}}); err != nil {
			t.Fatalf("a valid policy did not compile: %v", err)
		}
	})
}
