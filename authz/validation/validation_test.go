package validation_test

import (
	"encoding/json"
	"fmt"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	metav1validation "k8s.io/apimachinery/pkg/apis/meta/v1/validation"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/validation/field"
	"sigs.k8s.io/yaml"

	"github.com/mesh-dev/mesh/authz"
	"github.com/mesh-dev/mesh/authz/api/v1alpha1"
	"github.com/mesh-dev/mesh/authz/validation"
	"github.com/mesh-dev/mesh/internal/jsonshape"
)

const head = "apiVersion: security.mesh.dev/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {name: p, namespace: shop}\n"

// TestErrors pins Validate's text for each kind of mistake: the webhook
// and meshctl print it, docs/policy.md shows it.
func TestErrors(t *testing.T) {
	tests := []struct{ spec, want string }{
		{"{action: PERMIT, rules: [{}]}", `spec.action: Unsupported value: "PERMIT": supported values: "ALLOW", "DENY", "AUDIT"`},
		{"{action: DENY}", `spec.rules: Required value: a DENY policy needs at least one rule`},
		{"{action: ALLOW, rules: [{from: [{}]}]}", `spec.rules[0].from[0]: Required value: set identities, namespaces, serviceAccounts or unauthenticated`},
		{"{action: ALLOW, rules: [{from: [{namespaces: [a], unauthenticated: true}]}]}",
			`spec.rules[0].from[0].unauthenticated: Invalid value: true: cannot be combined with identities, namespaces or serviceAccounts: a plaintext caller has no identity`},
		{"{action: ALLOW, rules: [{from: [{unauthenticated: true}], to: [{methods: [GET]}]}]}",
			`spec.rules[0].to[0]: Invalid value: "methods/paths": HTTP fields cannot apply to a rule whose callers are only unauthenticated`},
		{"{action: ALLOW, rules: [{from: [{namespaces: [Shop]}]}]}",
			`spec.rules[0].from[0].namespaces[0]: Invalid value: "Shop": a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')`},
		{"{action: ALLOW, rules: [{to: [{ports: [0]}]}]}", `spec.rules[0].to[0].ports[0]: Invalid value: "0": port out of range 1-65535`},
		{"{action: ALLOW, rules: [{to: [{ports: ['8080']}]}]}",
			`spec.rules[0].to[0].ports[0]: Invalid value: "8080": not a port number or container port name: must contain at least one letter (a-z)`},
		{"{action: ALLOW, rules: [{to: [{methods: [get]}]}]}",
			`spec.rules[0].to[0].methods[0]: Unsupported value: "get": supported values: "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "CONNECT", "TRACE"`},
		{"{action: ALLOW, rules: [{}], selector: {matchExpressions: [{key: app, operator: Has}]}}",
			`spec.selector.matchExpressions[0].operator: Invalid value: "Has": not a valid selector operator`},
		{"{action: ALLOW, rules: [{}], selector: {matchExpressions: [{key: app, operator: In}]}}",
			"spec.selector.matchExpressions[0].values: Required value: must be specified when `operator` is 'In' or 'NotIn'"},
		{"{action: ALLOW, rules: [{}], selector: {matchExpressions: [{key: app, operator: Exists, values: [x]}]}}",
			"spec.selector.matchExpressions[0].values: Forbidden: may not be specified when `operator` is 'Exists' or 'DoesNotExist'"},
		{"{action: ALLOW, rules: [{}], selector: {matchLabels: {'-app': x}}}",
			`spec.selector.matchLabels: Invalid value: "-app": name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')`},
	}
	for _, tc := range tests {
		var p v1alpha1.AuthorizationPolicy
		if err := yaml.UnmarshalStrict([]byte(head+"spec: "+tc.spec), &p); err != nil {
			t.Fatalf("%s: %v", tc.spec, err)
		}
		errs := validation.Validate(&p)
		if len(errs) != 1 || errs[0].Error() != tc.want {
			t.Errorf("%s:\n got %v\nwant %s", tc.spec, errs, tc.want)
		}
		agree(t, &p)
	}
}

// agree checks that authz.Validate and its field.ErrorList form print the
// same, one by one and aggregated.
func agree(t *testing.T, p *v1alpha1.AuthorizationPolicy) {
	t.Helper()
	q := validation.Policy(p)
	ours := authz.Validate(&q)
	theirs := validation.ErrorList(ours)
	if len(ours) != len(theirs) {
		t.Fatalf("%d errors, %d as a field.ErrorList", len(ours), len(theirs))
	}
	for i := range ours {
		if ours[i].Error() != theirs[i].Error() {
			t.Errorf("error %d: %q, as a field.Error %q", i, ours[i].Error(), theirs[i].Error())
		}
	}
	if len(ours) > 0 && ours.ToAggregate().Error() != theirs.ToAggregate().Error() {
		t.Errorf("aggregate %q, field.ErrorList's %q", ours.ToAggregate(), theirs.ToAggregate())
	}
}

// selectorCase builds a selector and a few label sets from fuzz bytes,
// over a small universe of keys, values and operators so that matches and
// mistakes are both frequent.
func selectorCase(b []byte) (*metav1.LabelSelector, []map[string]string) {
	keys := []string{"app", "tier", "example.com/team", "-bad", "a/b/c", strings.Repeat("k", 64), ""}
	vals := []string{"web", "db", "", "x_y.z", "-bad", strings.Repeat("v", 64)}
	ops := []metav1.LabelSelectorOperator{"In", "NotIn", "Exists", "DoesNotExist", "Has", ""}
	next := func() int {
		if len(b) == 0 {
			return 0
		}
		v := int(b[0])
		b = b[1:]
		return v
	}
	s := &metav1.LabelSelector{}
	for range next() % 3 {
		if s.MatchLabels == nil {
			s.MatchLabels = map[string]string{}
		}
		s.MatchLabels[keys[next()%len(keys)]] = vals[next()%len(vals)]
	}
	for range next() % 3 {
		r := metav1.LabelSelectorRequirement{Key: keys[next()%len(keys)], Operator: ops[next()%len(ops)]}
		for range next() % 3 {
			r.Values = append(r.Values, vals[next()%len(vals)])
		}
		s.MatchExpressions = append(s.MatchExpressions, r)
	}
	var sets []map[string]string
	for range 4 {
		l := map[string]string{}
		for range next() % 4 {
			l[keys[next()%3]] = vals[next()%3]
		}
		sets = append(sets, l)
	}
	return s, sets
}

// agreeSelector: the same errors as metav1validation.ValidateLabelSelector
// (in any order: both range over a map), and for a valid selector the same
// matches as metav1.LabelSelectorAsSelector.
func agreeSelector(t *testing.T, s *metav1.LabelSelector, sets []map[string]string) {
	p := &v1alpha1.AuthorizationPolicy{Spec: v1alpha1.AuthorizationPolicySpec{Action: v1alpha1.Audit, Selector: s}}
	var got, want []string
	for _, e := range validation.Validate(p) {
		got = append(got, e.Error()+" origin="+e.Origin)
	}
	for _, e := range metav1validation.ValidateLabelSelector(s, metav1validation.LabelSelectorValidationOptions{}, field.NewPath("spec", "selector")) {
		want = append(want, e.Error()+" origin="+e.Origin)
	}
	slices.Sort(got)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Fatalf("selector %+v: errors\n%q\napimachinery's\n%q", s, got, want)
	}
	if len(got) > 0 {
		return
	}
	sel, err := metav1.LabelSelectorAsSelector(s)
	if err != nil {
		t.Fatalf("selector %+v: valid, but apimachinery cannot convert it: %v", s, err)
	}
	q := validation.Policy(p)
	for _, l := range sets {
		if got, want := q.Spec.Selector.Matches(l), sel.Matches(labels.Set(l)); got != want {
			t.Fatalf("selector %+v on %v: matches %v, apimachinery says %v", s, l, got, want)
		}
	}
}

func TestSelectorAgreement(t *testing.T) {
	for i := range 2000 {
		b := []byte(fmt.Sprintf("%08d", i*7919))
		for j := range b {
			b[j] = b[j] * byte(i+j)
		}
		s, sets := selectorCase(b)
		agreeSelector(t, s, sets)
	}
}

// TestSelectorMatches pins matching on its own.
func TestSelectorMatches(t *testing.T) {
	web := map[string]string{"app": "web", "tier": "front"}
	tests := []struct {
		sel  authz.LabelSelector
		want bool
	}{
		{authz.LabelSelector{}, true},
		{authz.LabelSelector{MatchLabels: map[string]string{"app": "web"}}, true},
		{authz.LabelSelector{MatchLabels: map[string]string{"app": "db"}}, false},
		{authz.LabelSelector{MatchLabels: map[string]string{"team": ""}}, false},
		{authz.LabelSelector{MatchExpressions: []authz.LabelSelectorRequirement{{Key: "app", Operator: "In", Values: []string{"db", "web"}}}}, true},
		{authz.LabelSelector{MatchExpressions: []authz.LabelSelectorRequirement{{Key: "app", Operator: "NotIn", Values: []string{"web"}}}}, false},
		{authz.LabelSelector{MatchExpressions: []authz.LabelSelectorRequirement{{Key: "team", Operator: "NotIn", Values: []string{"x"}}}}, true},
		{authz.LabelSelector{MatchExpressions: []authz.LabelSelectorRequirement{{Key: "tier", Operator: "Exists"}}}, true},
		{authz.LabelSelector{MatchExpressions: []authz.LabelSelectorRequirement{{Key: "tier", Operator: "DoesNotExist"}}}, false},
		{authz.LabelSelector{MatchExpressions: []authz.LabelSelectorRequirement{{Key: "tier", Operator: "Has"}}}, false},
	}
	for _, tc := range tests {
		if got := tc.sel.Matches(web); got != tc.want {
			t.Errorf("%+v.Matches(%v) = %v, want %v", tc.sel, web, got, tc.want)
		}
	}
}

func FuzzSelectorAgreement(f *testing.F) {
	f.Add([]byte{2, 0, 0, 1, 1, 1, 0, 2, 1, 1, 2})
	f.Add([]byte{0, 2, 0, 0, 1, 1, 1, 3, 0, 0, 2, 1, 1})
	f.Fuzz(func(t *testing.T, b []byte) {
		s, sets := selectorCase(b)
		agreeSelector(t, s, sets)
	})
}

// referenceParse is ParsePolicies as it was while it decoded into the API
// type: the reference the new one must agree with.
func referenceParse(data []byte) ([]v1alpha1.AuthorizationPolicy, error) {
	var out []v1alpha1.AuthorizationPolicy
	for i, doc := range regexp.MustCompile(`(?m)^---\s*$`).Split(string(data), -1) {
		if len(strings.TrimSpace(doc)) == 0 {
			continue
		}
		var p v1alpha1.AuthorizationPolicy
		if err := yaml.UnmarshalStrict([]byte(doc), &p); err != nil {
			return nil, fmt.Errorf("authz: document %d: %w", i+1, err)
		}
		if p.APIVersion != v1alpha1.GroupVersion.String() || p.Kind != "AuthorizationPolicy" {
			return nil, fmt.Errorf("authz: document %d is %s %s, not %s AuthorizationPolicy", i+1, p.APIVersion, p.Kind, v1alpha1.GroupVersion)
		}
		out = append(out, p)
	}
	return out, nil
}

// typeNames are the one known difference between the two: a value of the
// wrong JSON type is reported with the Go type it was decoded into, now
// authz's rather than v1alpha1's, metav1's (v1.) or types'.
var typeNames = strings.NewReplacer("authz.ObjectMeta", "v1.ObjectMeta", "authz.OwnerReference", "v1.OwnerReference",
	"authz.ManagedFieldsEntry", "v1.ManagedFieldsEntry", "authz.ManagedFieldsOperationType", "v1.ManagedFieldsOperationType",
	"authz.Condition", "v1.Condition", "authz.ConditionStatus", "v1.ConditionStatus", "authz.UID", "types.UID",
	"authz.TypeMeta", "v1.TypeMeta", "authz.PolicySpec", "v1alpha1.AuthorizationPolicySpec", "PolicySpec.", "AuthorizationPolicySpec.",
	"authz.LabelSelectorRequirement", "v1.LabelSelectorRequirement", "authz.LabelSelectorOperator", "v1.LabelSelectorOperator",
	"authz.LabelSelector", "v1.LabelSelector", "authz.", "v1alpha1.")

func agreeParse(t *testing.T, doc string) {
	t.Helper()
	got, err := authz.ParsePolicies([]byte(doc))
	want, werr := referenceParse([]byte(doc))
	if (err == nil) != (werr == nil) {
		t.Fatalf("ParsePolicies(%q): error %v, before %v", doc, err, werr)
	}
	if err != nil {
		if typeNames.Replace(err.Error()) != werr.Error() {
			t.Fatalf("ParsePolicies(%q): error\n%v\nbefore\n%v", doc, err, werr)
		}
		return
	}
	if w := validation.Policies(want); !reflect.DeepEqual(got, w) && !(len(got) == 0 && len(w) == 0) {
		t.Fatalf("ParsePolicies(%q) = %+v, before %+v", doc, got, w)
	}
}

var parseSeeds = []string{
	head + "spec: {action: ALLOW, rules: [{from: [{namespaces: [shop]}], to: [{ports: [8080, http], methods: [GET], paths: ['/api/*']}]}]}",
	head + "spec: {selector: {matchLabels: {app: web}, matchExpressions: [{key: tier, operator: In, values: [a]}]}, action: DENY, dryRun: true, rules: [{}]}",
	"apiVersion: security.mesh.dev/v1alpha1\nkind: AuthorizationPolicy\nmetadata:\n  name: p\n  labels: {a: b}\n  annotations: {x: '1'}\n  creationTimestamp: '2026-01-02T03:04:05Z'\n  generation: 3\n  uid: u\n  resourceVersion: '7'\n  finalizers: [f]\n  ownerReferences: [{apiVersion: v1, kind: Pod, name: n, uid: u, controller: true}]\n  managedFields: [{manager: m, operation: Apply, time: '2026-01-02T03:04:05Z', fieldsType: FieldsV1, fieldsV1: {f:spec: {}}}]\nspec: {action: AUDIT}\nstatus: {observedGeneration: 2, selectedWorkloads: 1, enforcedWorkloads: 1, enforced: 1/1, workloads: [a], conditions: [{type: Accepted, status: 'True', lastTransitionTime: '2026-01-02T03:04:05Z', reason: r, message: m}]}",
	head + "spec: {action: ALLOW}\n---\n" + head + "spec: {action: DENY, rules: [{}]}",
	head + "metadata: {creationTimestamp: yesterday}\nspec: {action: ALLOW}",
	head + "spec: {action: 5}",
	head + "spec: {action: ALLOW, rules: [{to: [{ports: [1.5]}]}]}",
	head + "spec: {action: ALLOW, rules: [{to: [{ports: [{}]}]}]}",
	head + "spec: {action: ALLOW, rules: {}}",
	head + "spec: {action: ALLOW, selector: {matchLabels: {a: 1}}}",
	head + "spec: {action: ALLOW, selector: {matchExpressions: [{key: a, operator: 1}]}}",
	head + "spec: {action: ALLOW, selector: []}",
	head + "spec: {Action: ALLOW, DRYRUN: true}",
	head + "spec: {action: ALLOW, action: DENY}",
	head + "spec: {action: ALLOW}\nstatus: {conditions: [{lastTransitionTime: now}]}",
	head + "spec: {action: ALLOW}\nstatus: {bogus: 1}",
	head + "spec: {action: ALLOW}\nextra: 1",
	"apiVersion: 1\nkind: AuthorizationPolicy\nspec: {action: ALLOW}",
	"apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}",
	"metadata: {generation: x}",
	"metadata: {name: 5, namespace: true}\napiVersion: security.mesh.dev/v1alpha1\nkind: AuthorizationPolicy\nspec: {action: ALLOW}",
	"spec: null\napiVersion: security.mesh.dev/v1alpha1\nkind: AuthorizationPolicy",
	"- a\n- b", "{", "", "---\n---",
}

// TestParseAgreement: ParsePolicies accepts and refuses what it did while
// it decoded into v1alpha1.AuthorizationPolicy, with the same policies and
// the same messages (type names aside, see typeNames).
func TestParseAgreement(t *testing.T) {
	for _, doc := range parseSeeds {
		agreeParse(t, doc)
	}
}

func FuzzParseAgreement(f *testing.F) {
	for _, doc := range parseSeeds {
		f.Add(doc)
	}
	f.Fuzz(func(t *testing.T, doc string) {
		if len(doc) > 4096 {
			return
		}
		agreeParse(t, doc)
	})
}

func agreeDecode(t *testing.T, b []byte) {
	t.Helper()
	got, err := authz.DecodePolicy(b)
	var want v1alpha1.AuthorizationPolicy
	werr := json.Unmarshal(b, &want)
	if (err == nil) != (werr == nil) {
		t.Fatalf("DecodePolicy(%s): error %v, encoding/json into v1alpha1 %v", b, err, werr)
	}
	if err != nil {
		if typeNames.Replace(err.Error()) != werr.Error() {
			t.Fatalf("DecodePolicy(%s): error\n%v\nv1alpha1's\n%v", b, err, werr)
		}
		return
	}
	if w := validation.Policy(&want); !reflect.DeepEqual(got, w) {
		t.Fatalf("DecodePolicy(%s) = %+v, v1alpha1's %+v", b, got, w)
	}
}

// decodeSeeds: what the controller pushes (inventory's JSON of a resolved
// policy), and JSON that the old decoding refused or ignored.
func decodeSeeds(t testing.TB) [][]byte {
	var p v1alpha1.AuthorizationPolicy
	if err := yaml.UnmarshalStrict([]byte(parseSeeds[0]), &p); err != nil {
		t.Fatal(err)
	}
	pushed, err := json.Marshal(&p)
	if err != nil {
		t.Fatal(err)
	}
	out := [][]byte{pushed}
	for _, s := range []string{
		`{"metadata": {"name": "p", "creationTimestamp": "yesterday"}, "spec": {"action": "ALLOW"}}`,
		`{"metadata": {"labels": {"a": 1}}}`,
		`{"metadata": {"generation": "1"}}`,
		`{"status": {"conditions": [{"lastTransitionTime": 5}]}}`,
		`{"status": {"selectedWorkloads": 1.5}}`,
		`{"spec": {"action": 5}}`,
		`{"spec": {"rules": [{"to": [{"ports": [1.5]}]}]}}`,
		`{"spec": {"rules": [{"to": [{"ports": [8080, "http", null]}]}]}, "unknown": 1, "SPEC": {"dryRun": true}}`,
		`{"spec": {"selector": {"matchLabels": {"a": "b"}, "matchExpressions": [{"key": "k", "operator": "In", "values": ["v"]}]}}}`,
		`{"apiVersion": 1}`, `{"kind": "x", "Kind": "y"}`, `[]`, `null`, `{`, `{"metadata": {"ownerReferences": [{"uid": 1}]}}`,
		`{"metadata": {"managedFields": [{"fieldsV1": {"f:spec": {}}, "time": "2026-01-02T03:04:05Z", "operation": 1}]}}`,
	} {
		out = append(out, []byte(s))
	}
	return out
}

// TestDecodeAgreement: DecodePolicy reads the controller's JSON as
// encoding/json read it into v1alpha1.AuthorizationPolicy: the same
// refusals, the same messages (type names aside), the same policy.
func TestDecodeAgreement(t *testing.T) {
	for _, b := range decodeSeeds(t) {
		agreeDecode(t, b)
	}
}

func FuzzDecodeAgreement(f *testing.F) {
	for _, b := range decodeSeeds(f) {
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		if len(b) > 4096 {
			return
		}
		agreeDecode(t, b)
	})
}

// TestAggregate: several errors print as field.ErrorList.ToAggregate
// prints them, in order, as the webhook and the controller report them.
func TestAggregate(t *testing.T) {
	var p v1alpha1.AuthorizationPolicy
	spec := "spec: {action: DENY, rules: [{from: [{}, {namespaces: [a.b]}], to: [{paths: ['//x']}]}]}"
	if err := yaml.UnmarshalStrict([]byte(head+spec), &p); err != nil {
		t.Fatal(err)
	}
	want := `[spec.rules[0].from[0]: Required value: set identities, namespaces, serviceAccounts or unauthenticated, ` +
		`spec.rules[0].from[1].namespaces[0]: Invalid value: "a.b": must not contain dots, ` +
		`spec.rules[0].to[0].paths[0]: Invalid value: "//x": the proxy matches normalised paths (dot segments removed, slashes merged, unreserved characters decoded): write "/x"]`
	q := validation.Policy(&p)
	if got := authz.Validate(&q).ToAggregate(); got == nil || got.Error() != want {
		t.Errorf("authz.Validate(...).ToAggregate() = %v\nwant %s", got, want)
	}
	if got := validation.Validate(&p).ToAggregate(); got == nil || got.Error() != want {
		t.Errorf("validation.Validate(...).ToAggregate() = %v\nwant %s", got, want)
	}
	if authz.ErrorList(nil).ToAggregate() != nil {
		t.Error("an empty list aggregates to an error")
	}
}

// TestPolicyMatchesV1alpha1: authz's policy spec has every field of the
// CRD's spec, with the same JSON name, options and kind, through the
// selector and the rules. A field the CRD gains fails here, rather than
// being dropped by Policy's conversion and by DecodePolicy alike, where
// the agreement tests above could not see it.
func TestPolicyMatchesV1alpha1(t *testing.T) {
	crd, own := jsonshape.Fields(reflect.TypeFor[v1alpha1.AuthorizationPolicySpec]()), jsonshape.Fields(reflect.TypeFor[authz.PolicySpec]())
	if !slices.Equal(crd, own) {
		t.Errorf("v1alpha1.AuthorizationPolicySpec has JSON fields\n%q\nbut authz.PolicySpec has\n%q", crd, own)
	}
	if len(crd) < 15 {
		t.Fatalf("only %d fields listed: the walk is broken: %q", len(crd), crd)
	}
}
