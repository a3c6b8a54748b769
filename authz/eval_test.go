package authz_test

import (
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/mesh-dev/mesh/authz"
)

var td = spiffeid.RequireTrustDomainFromString("cluster.local")

// policies parses policy YAML documents separated by ---.
func policies(t testing.TB, docs string) []authz.Policy {
	t.Helper()
	out, err := authz.ParsePolicies([]byte(docs))
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func backend(annotations map[string]string) authz.Workload {
	return authz.Workload{
		Namespace: "shop", Pod: "backend-0",
		Labels:               map[string]string{"app": "backend"},
		Ports:                map[string]uint16{"http-api": 8080, "metrics": 9090},
		NamespaceAnnotations: annotations,
	}
}

func compile(t testing.TB, mode authz.DefaultMode, w authz.Workload, docs string) *authz.Table {
	t.Helper()
	tbl, err := authz.Compile(authz.Input{TrustDomain: td, MeshDefault: mode, Workload: w, Policies: policies(t, docs)})
	if err != nil {
		t.Fatal(err)
	}
	return tbl
}

const (
	frontend   = "spiffe://cluster.local/ns/shop/sa/frontend"
	opsJob     = "spiffe://cluster.local/ns/ops/sa/job"
	prometheus = "spiffe://cluster.local/ns/monitoring/sa/prometheus"
	grafana    = "spiffe://cluster.local/ns/monitoring/sa/grafana"
	shopOther  = "spiffe://cluster.local/ns/shop/sa/other"
	foreign    = "spiffe://other.example/ns/shop/sa/frontend"
)

const issueExample = `
apiVersion: security.mesh.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: backend-from-frontend, namespace: shop}
spec:
  selector: {matchLabels: {app: backend}}
  action: ALLOW
  rules:
  - from:
    - identities: ["spiffe://cluster.local/ns/shop/sa/frontend", "spiffe://cluster.local/ns/ops/*"]
    - namespaces: ["monitoring"]
      serviceAccounts: ["prometheus"]
    - unauthenticated: true
    to:
    - ports: [8080, "http-api"]
      methods: ["GET", "HEAD"]
      paths: ["/api/*", "/healthz"]
`

func TestEvaluate(t *testing.T) {
	get := func(peer string, port uint16, path string) *authz.Request {
		return &authz.Request{Peer: peer, Port: port, HTTP: true, Method: "GET", Path: path}
	}
	tcp := func(peer string, port uint16) *authz.Request { return &authz.Request{Peer: peer, Port: port} }
	denyAdmin := `
apiVersion: security.mesh.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: no-admin, namespace: shop}
spec:
  action: DENY
  rules:
  - to: [{paths: ["/api/admin*"]}]
`
	meshWideDeny := `
apiVersion: security.mesh.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: no-ops, namespace: mesh-system}
spec:
  action: DENY
  rules:
  - from: [{namespaces: ["ops"]}]
`
	otherNS := `
apiVersion: security.mesh.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: elsewhere, namespace: billing}
spec:
  action: DENY
  rules: [{from: [{namespaces: ["shop"]}]}]
`
	otherApp := `
apiVersion: security.mesh.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: web-only, namespace: shop}
spec:
  selector: {matchLabels: {app: web}}
  action: ALLOW
  rules: [{from: [{identities: ["spiffe://cluster.local/ns/ops/sa/job"]}]}]
`
	tests := []struct {
		name   string
		mode   authz.DefaultMode
		annot  map[string]string
		docs   string
		req    *authz.Request
		allow  bool
		policy string
		rule   string
		reason string
	}{
		// Defaults, with no policy at all.
		{"allow-mesh allows a mesh identity", authz.DefaultAllowMesh, nil, "", tcp(frontend, 5432), true, "default:allow-mesh", "", authz.ReasonDefaultAllow},
		{"allow-mesh denies plaintext", authz.DefaultAllowMesh, nil, "", tcp("", 5432), false, "default:allow-mesh", "", authz.ReasonNotMesh},
		{"allow-mesh denies another trust domain", authz.DefaultAllowMesh, nil, "", tcp(foreign, 5432), false, "default:allow-mesh", "", authz.ReasonNotMesh},
		{"deny default denies everything", authz.DefaultDeny, nil, "", tcp(frontend, 5432), false, "default:deny", "", authz.ReasonDefaultDeny},
		{"allow-same-namespace allows shop", authz.DefaultAllowSameNamespace, nil, "", tcp(shopOther, 5432), true, "default:allow-same-namespace", "", authz.ReasonDefaultAllow},
		{"allow-same-namespace denies ops", authz.DefaultAllowSameNamespace, nil, "", tcp(opsJob, 5432), false, "default:allow-same-namespace", "", authz.ReasonNotSameNS},
		{"allow-all allows plaintext", authz.DefaultAllowAll, nil, "", tcp("", 5432), true, "default:allow-all", "", authz.ReasonDefaultAllow},
		{"namespace annotation overrides the mesh default", authz.DefaultAllowMesh, map[string]string{authz.DefaultPolicyAnnotation: "deny"}, "", tcp(frontend, 1), false, "default:deny", "", authz.ReasonDefaultDeny},

		// The issue's example: ALLOW governs the workload.
		{"exact identity, GET /api/x on 8080", authz.DefaultAllowMesh, nil, issueExample, get(frontend, 8080, "/api/x"), true, "shop/backend-from-frontend", "0", authz.ReasonAllowRule},
		{"prefix identity, exact path", authz.DefaultAllowMesh, nil, issueExample, get(opsJob, 8080, "/healthz"), true, "shop/backend-from-frontend", "0", authz.ReasonAllowRule},
		{"namespace and service account together", authz.DefaultAllowMesh, nil, issueExample, get(prometheus, 8080, "/api/metrics"), true, "shop/backend-from-frontend", "0", authz.ReasonAllowRule},
		{"namespace without the service account", authz.DefaultAllowMesh, nil, issueExample, get(grafana, 8080, "/api/x"), false, "shop/backend-from-frontend", "", authz.ReasonNoAllowRule},
		{"unauthenticated entry", authz.DefaultAllowMesh, nil, issueExample, get("", 8080, "/healthz"), true, "shop/backend-from-frontend", "0", authz.ReasonAllowRule},
		{"wrong method", authz.DefaultAllowMesh, nil, issueExample, &authz.Request{Peer: frontend, Port: 8080, HTTP: true, Method: "POST", Path: "/api/x"}, false, "shop/backend-from-frontend", "", authz.ReasonNoAllowRule},
		{"wrong path", authz.DefaultAllowMesh, nil, issueExample, get(frontend, 8080, "/internal"), false, "shop/backend-from-frontend", "", authz.ReasonNoAllowRule},
		{"wrong port", authz.DefaultAllowMesh, nil, issueExample, get(frontend, 9090, "/api/x"), false, "shop/backend-from-frontend", "", authz.ReasonNoAllowRule},
		{"HTTP fields never match TCP", authz.DefaultAllowMesh, nil, issueExample, tcp(frontend, 8080), false, "shop/backend-from-frontend", "", authz.ReasonNoAllowRule},
		{"an ALLOW policy overrides allow-all", authz.DefaultAllowAll, nil, issueExample, get(shopOther, 8080, "/api/x"), false, "shop/backend-from-frontend", "", authz.ReasonNoAllowRule},

		// DENY wins.
		{"DENY beats a matching ALLOW", authz.DefaultAllowMesh, nil, issueExample + "\n---\n" + denyAdmin, get(frontend, 8080, "/api/admin/users"), false, "shop/no-admin", "0", authz.ReasonDenyRule},
		{"DENY not matching leaves ALLOW", authz.DefaultAllowMesh, nil, issueExample + "\n---\n" + denyAdmin, get(frontend, 8080, "/api/orders"), true, "shop/backend-from-frontend", "0", authz.ReasonAllowRule},
		{"root-namespace DENY applies mesh-wide", authz.DefaultAllowMesh, nil, issueExample + "\n---\n" + meshWideDeny, get(opsJob, 8080, "/api/x"), false, "mesh-system/no-ops", "0", authz.ReasonDenyRule},
		// A connection the proxy cannot read as HTTP has no path: a DENY naming
		// paths denies it (fail closed) instead of letting it through.
		{"DENY with HTTP fields denies non-HTTP (fail closed)", authz.DefaultAllowMesh, nil, denyAdmin, tcp(frontend, 8080), false, "shop/no-admin", "0", authz.ReasonDenyRule},

		// Policies that do not apply.
		{"another namespace's policy", authz.DefaultAllowMesh, nil, otherNS, tcp(frontend, 1), true, "default:allow-mesh", "", authz.ReasonDefaultAllow},
		{"a selector for other pods", authz.DefaultAllowMesh, nil, otherApp, tcp(frontend, 1), true, "default:allow-mesh", "", authz.ReasonDefaultAllow},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tbl := compile(t, tt.mode, backend(tt.annot), tt.docs)
			d := tbl.Evaluate(tt.req)
			if d.Allow != tt.allow || d.Policy != tt.policy || d.Rule != tt.rule || d.Reason != tt.reason {
				t.Fatalf("Evaluate = allow=%v policy=%q rule=%q reason=%q; want allow=%v policy=%q rule=%q reason=%q",
					d.Allow, d.Policy, d.Rule, d.Reason, tt.allow, tt.policy, tt.rule, tt.reason)
			}
		})
	}
}

func TestAuditAndDryRun(t *testing.T) {
	docs := `
apiVersion: security.mesh.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: watch-ops, namespace: shop}
spec:
  action: AUDIT
  rules: [{from: [{namespaces: ["ops"]}]}]
---
apiVersion: security.mesh.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: lockdown, namespace: shop}
spec:
  action: ALLOW
  dryRun: true
  rules: [{from: [{identities: ["spiffe://cluster.local/ns/shop/sa/frontend"]}]}]
---
apiVersion: security.mesh.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: no-deletes, namespace: shop}
spec:
  action: DENY
  dryRun: true
  rules: [{to: [{methods: ["DELETE"]}]}]
`
	tbl := compile(t, authz.DefaultAllowMesh, backend(nil), docs)

	d := tbl.Evaluate(&authz.Request{Peer: opsJob, Port: 8080, HTTP: true, Method: "GET", Path: "/x"})
	if !d.Allow || d.Policy != "default:allow-mesh" || d.Audit != "shop/watch-ops" {
		t.Fatalf("ops caller: %+v; want allowed by the default, audited by shop/watch-ops", d)
	}
	if !d.HasDryRun || d.DryRun.Allow || d.DryRun.Policy != "shop/lockdown" || d.DryRun.Reason != authz.ReasonNoAllowRule {
		t.Fatalf("ops caller's would-be decision: %+v; want denied by the dry-run lockdown", d.DryRun)
	}

	// Enforcing the dry-run DENY of DELETEs would also refuse connections
	// that are not HTTP (they have no method to tell): the preview says so.
	d = tbl.Evaluate(&authz.Request{Peer: opsJob, Port: 8080})
	if !d.Allow || d.DryRun.Allow || d.DryRun.Policy != "shop/no-deletes" {
		t.Fatalf("ops caller over TCP: %+v; want allowed, would be denied by the dry-run no-deletes", d)
	}

	d = tbl.Evaluate(&authz.Request{Peer: frontend, Port: 8080, HTTP: true, Method: "DELETE", Path: "/x"})
	if !d.Allow || d.Audit != "" {
		t.Fatalf("frontend DELETE: %+v; want allowed, not audited", d)
	}
	if d.DryRun.Allow || d.DryRun.Policy != "shop/no-deletes" {
		t.Fatalf("frontend DELETE would-be: %+v; want denied by the dry-run no-deletes", d.DryRun)
	}

	d = tbl.Evaluate(&authz.Request{Peer: frontend, Port: 8080, HTTP: true, Method: "GET", Path: "/x"})
	if !d.Allow || !d.DryRun.Allow || d.DryRun.Policy != "shop/lockdown" {
		t.Fatalf("frontend GET: %+v; want allowed in both worlds, by lockdown in the would-be one", d)
	}
}

func TestCompileRefuses(t *testing.T) {
	bad := `
apiVersion: security.mesh.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: broken, namespace: shop}
spec:
  action: ALLOW
  rules: [{from: [{identities: ["spiffe://cluster.local/ns/*/sa/x"]}]}]
`
	_, err := authz.Compile(authz.Input{TrustDomain: td, Workload: backend(nil), Policies: policies(t, bad)})
	if err == nil || !strings.Contains(err.Error(), "spec.rules[0].from[0].identities[0]") {
		t.Fatalf("Compile of a broken policy = %v", err)
	}
	_, err = authz.Compile(authz.Input{TrustDomain: td, Workload: backend(map[string]string{authz.DefaultPolicyAnnotation: "maybe"})})
	if err == nil || !strings.Contains(err.Error(), `default policy "maybe"`) {
		t.Fatalf("Compile with a bad annotation = %v", err)
	}
}

func TestEvaluateDoesNotAllocate(t *testing.T) {
	tbl := compile(t, authz.DefaultAllowMesh, backend(nil), issueExample+"\n---\n"+manyRules(1000))
	reqs := []*authz.Request{
		{Peer: frontend, Port: 8080, HTTP: true, Method: "GET", Path: "/api/x"},
		{Peer: grafana, Port: 8080, HTTP: true, Method: "GET", Path: "/api/x"},
		{Peer: "spiffe://cluster.local/ns/load/sa/sa-999", Port: 8080},
		{Port: 8080},
	}
	for _, r := range reqs {
		if n := testing.AllocsPerRun(100, func() { tbl.Evaluate(r) }); n != 0 {
			t.Fatalf("Evaluate(%+v) allocates %v times", r, n)
		}
	}
}

// manyRules is one ALLOW policy with n rules, each for its own identity.
func manyRules(n int) string {
	var b strings.Builder
	b.WriteString("apiVersion: security.mesh.dev/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {name: many, namespace: shop}\nspec:\n  action: ALLOW\n  rules:\n")
	for i := range n {
		fmt.Fprintf(&b, "  - from: [{identities: [\"spiffe://cluster.local/ns/load/sa/sa-%d\"]}]\n    to: [{ports: [8080]}]\n", i)
	}
	return b.String()
}

// BenchmarkEvaluate1000Rules: a workload with 1,000 identity rules (the
// issue's bound: under 1 µs, no allocations).
func BenchmarkEvaluate1000Rules(b *testing.B) {
	tbl := compile(b, authz.DefaultAllowMesh, backend(nil), manyRules(1000))
	req := &authz.Request{Peer: "spiffe://cluster.local/ns/load/sa/sa-999", Port: 8080}
	b.ReportAllocs()
	for b.Loop() {
		if !tbl.Evaluate(req).Allow {
			b.Fatal("denied")
		}
	}
}

// BenchmarkEvaluate1000NamespaceRules: 1,000 namespace rules, none
// matching (indexed by namespace).
func BenchmarkEvaluate1000NamespaceRules(b *testing.B) {
	benchmarkNoMatch(b, "namespaces: [\"ns-%d\"]")
}

// BenchmarkEvaluate1000PrefixRules: 1,000 rules with namespace-wide
// identity prefixes (spiffe://td/ns/<ns>/*), none matching (indexed by the
// namespace). Only rules naming ServiceAccounts alone, unauthenticated
// callers, or anyone are scanned in order.
func BenchmarkEvaluate1000PrefixRules(b *testing.B) {
	benchmarkNoMatch(b, "identities: [\"spiffe://cluster.local/ns/p-%d/*\"]")
}

func benchmarkNoMatch(b *testing.B, from string) {
	var sb strings.Builder
	sb.WriteString("apiVersion: security.mesh.dev/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {name: ns, namespace: shop}\nspec:\n  action: ALLOW\n  rules:\n")
	for i := range 1000 {
		fmt.Fprintf(&sb, "  - from: [{"+from+"}]\n", i)
	}
	tbl := compile(b, authz.DefaultAllowMesh, backend(nil), sb.String())
	req := &authz.Request{Peer: frontend, Port: 8080}
	b.ReportAllocs()
	for b.Loop() {
		if tbl.Evaluate(req).Allow {
			b.Fatal("allowed")
		}
	}
}

func TestParsePolicies(t *testing.T) {
	ps, err := authz.ParsePolicies([]byte(issueExample + "\n---\n" + issueExample))
	if err != nil || len(ps) != 2 || ps[0].Name != "backend-from-frontend" {
		t.Fatalf("ParsePolicies = %d policies, %v", len(ps), err)
	}
	for _, bad := range []struct{ doc, want string }{
		{"apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}", "document 1 is v1 ConfigMap"},
		{issueExample + "\n---\n" + strings.Replace(issueExample, "action:", "actoin:", 1), `document 2: error unmarshaling JSON: while decoding JSON: json: unknown field "actoin"`},
	} {
		if _, err := authz.ParsePolicies([]byte(bad.doc)); err == nil || !strings.Contains(err.Error(), bad.want) {
			t.Errorf("ParsePolicies = %v, want %q", err, bad.want)
		}
	}
}

// TestUnresolvedNamedPorts: a rule naming a container port the pod does not
// have is reported; in a DENY it matches every port (fail closed), in an
// ALLOW it matches nothing.
func TestUnresolvedNamedPorts(t *testing.T) {
	docs := `
apiVersion: security.mesh.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: no-debug, namespace: shop}
spec:
  action: DENY
  rules: [{to: [{ports: ["debug"]}]}]
---
apiVersion: security.mesh.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: grpc-only, namespace: shop}
spec:
  action: ALLOW
  rules: [{from: [{namespaces: ["ops"]}], to: [{ports: ["grpc"]}]}]
`
	tbl := compile(t, authz.DefaultAllowMesh, backend(nil), docs)
	for _, port := range []uint16{8080, 9090, 1} {
		d := tbl.Evaluate(&authz.Request{Peer: opsJob, Port: port})
		if d.Allow || d.Policy != "shop/no-debug" {
			t.Errorf("port %d: %+v; want denied by the unresolvable DENY", port, d)
		}
	}
	w := tbl.Warnings()
	want := []string{
		`policy shop/grpc-only rule 0 to 0: the pod has no container port named "grpc"; this port matches nothing`,
		`policy shop/no-debug rule 0 to 0: the pod has no container port named "debug"; this DENY matches every port (fail closed)`,
	}
	if strings.Join(w, "\n") != strings.Join(want, "\n") {
		t.Fatalf("warnings:\n%s\nwant:\n%s", strings.Join(w, "\n"), strings.Join(want, "\n"))
	}
	// Without the DENY, the ALLOW's unresolved port allows nothing.
	tbl = compile(t, authz.DefaultAllowMesh, backend(nil), docs[strings.Index(docs, "---")+3:])
	if d := tbl.Evaluate(&authz.Request{Peer: opsJob, Port: 8080}); d.Allow {
		t.Fatalf("an ALLOW naming an unresolved port allowed %+v", d)
	}
}

// TestRequiresHTTP: the ports on which some rule names methods or paths.
func TestRequiresHTTP(t *testing.T) {
	tests := []struct {
		name string
		docs string
		want map[uint16]bool
	}{
		{"no policy", "", map[uint16]bool{8080: false, 9000: false}},
		{"TCP-only rules", `
apiVersion: security.mesh.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: p, namespace: shop}
spec:
  action: ALLOW
  rules: [{to: [{ports: [8080]}]}]
`, map[uint16]bool{8080: false, 9000: false}},
		{"paths on a named port", `
apiVersion: security.mesh.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: p, namespace: shop}
spec:
  action: DENY
  rules: [{to: [{ports: ["http-api"], paths: ["/admin*"]}]}]
`, map[uint16]bool{8080: true, 9000: false}},
		{"methods on every port", `
apiVersion: security.mesh.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: p, namespace: shop}
spec:
  action: ALLOW
  rules: [{to: [{methods: ["GET"]}]}]
`, map[uint16]bool{8080: true, 9000: true}},
		// Dry-run and AUDIT policies never change a decision, so they do
		// not change how a port is read either.
		{"methods on every port, dry-run", `
apiVersion: security.mesh.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: p, namespace: shop}
spec:
  action: ALLOW
  dryRun: true
  rules: [{to: [{methods: ["GET"]}]}]
`, map[uint16]bool{8080: false, 9000: false}},
		{"paths in an AUDIT policy", `
apiVersion: security.mesh.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: p, namespace: shop}
spec:
  action: AUDIT
  rules: [{to: [{paths: ["/admin"]}]}]
`, map[uint16]bool{8080: false}},
		{"another workload's policy", `
apiVersion: security.mesh.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: p, namespace: shop}
spec:
  selector: {matchLabels: {app: web}}
  action: DENY
  rules: [{to: [{paths: ["/admin"]}]}]
`, map[uint16]bool{8080: false}},
	}
	for _, tc := range tests {
		tbl := compile(t, authz.DefaultAllowMesh, backend(nil), tc.docs)
		for port, want := range tc.want {
			if got := tbl.RequiresHTTP(port); got != want {
				t.Errorf("%s: RequiresHTTP(%d) = %v, want %v", tc.name, port, got, want)
			}
		}
	}
}

// TestValidatePaths: a path rule must be written as the proxy matches
// paths, normalised, or it could never match; the error says what to write.
func TestValidatePaths(t *testing.T) {
	tests := []struct{ path, err string }{
		{"/admin*", ""},
		{"/api/v1/users", ""},
		{"*.php", ""},
		{"*", ""},
		{"/a%20b", ""},
		{"//admin*", `write "/admin*"`},
		{"/x/../admin", `write "/admin"`},
		{"/./admin*", `write "/admin*"`},
		{"/%61dmin", `write "/admin"`},
		{"/admin?x=1", "paths match without the query string"},
		{"/a b", "not a path the proxy can match"},
		{"/x/..%2Fadmin", "not a path the proxy can match"},
	}
	for _, tc := range tests {
		p := policies(t, `
apiVersion: security.mesh.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: p, namespace: shop}
spec:
  action: DENY
  rules: [{to: [{paths: ["x"]}]}]
`)[0]
		p.Spec.Rules[0].To[0].Paths = []string{tc.path}
		errs := authz.Validate(&p)
		switch {
		case tc.err == "" && len(errs) > 0:
			t.Errorf("%q refused: %v", tc.path, errs)
		case tc.err != "" && (len(errs) == 0 || !strings.Contains(errs.ToAggregate().Error(), tc.err)):
			t.Errorf("%q: errors %v, want one containing %q", tc.path, errs, tc.err)
		}
	}
}

// TestApplied: a table names the policies that apply to its workload, and
// only those (the proxy's /policy reports them): its namespace's whose
// selector matches, and the root namespace's, sorted, with generations.
func TestApplied(t *testing.T) {
	ps := policies(t, `
apiVersion: security.mesh.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: z-backend, namespace: shop, generation: 4}
spec: {selector: {matchLabels: {app: backend}}, action: ALLOW, rules: [{from: [{namespaces: [shop]}]}]}
---
apiVersion: security.mesh.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: frontend, namespace: shop, generation: 1}
spec: {selector: {matchLabels: {app: frontend}}, action: ALLOW, rules: [{from: [{namespaces: [shop]}]}]}
---
apiVersion: security.mesh.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: a-all, namespace: shop, generation: 2}
spec: {action: AUDIT, rules: [{}]}
---
apiVersion: security.mesh.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: elsewhere, namespace: billing, generation: 1}
spec: {action: DENY, rules: [{}]}
---
apiVersion: security.mesh.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: mesh-wide, namespace: mesh-system, generation: 7}
spec: {action: DENY, rules: [{from: [{namespaces: [untrusted]}]}]}
`)
	tbl, err := authz.Compile(authz.Input{TrustDomain: td, Workload: backend(nil), Policies: ps})
	if err != nil {
		t.Fatal(err)
	}
	want := []authz.Applied{{"mesh-system", "mesh-wide", 7}, {"shop", "a-all", 2}, {"shop", "z-backend", 4}}
	if got := tbl.Applied(); !slices.Equal(got, want) {
		t.Errorf("Applied() = %v, want %v", got, want)
	}
	// A copy: the caller cannot change the table's.
	tbl.Applied()[0].Name = "changed"
	if got := tbl.Applied(); !slices.Equal(got, want) {
		t.Errorf("Applied() after changing a returned copy = %v", got)
	}
}
