package policystatus_test

import (
	"fmt"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/mesh-dev/mesh/authz"
	"github.com/mesh-dev/mesh/authz/api/v1alpha1"
	"github.com/mesh-dev/mesh/authz/api/v1alpha1/crdtest"
	"github.com/mesh-dev/mesh/authz/validation"
	"github.com/mesh-dev/mesh/controlplane/policystatus"
)

func allow(ns, name string, sel *metav1.LabelSelector, ports ...intstr.IntOrString) *v1alpha1.AuthorizationPolicy {
	p := &v1alpha1.AuthorizationPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec:       v1alpha1.AuthorizationPolicySpec{Action: v1alpha1.Allow, Selector: sel},
	}
	if len(ports) > 0 {
		p.Spec.Rules = []v1alpha1.Rule{{To: []v1alpha1.Operation{{Ports: ports}}}}
	}
	return p
}

var (
	accepted   = "Accepted=True/Accepted"
	noWorkload = []string{accepted, "Resolved=False/NoWorkloads: selects no meshed pod", "Enforced=False/NoWorkloads: selects no meshed pod"}
)

// TestSelection: a policy selects the live meshed pods its selector
// matches, and says so when that is none or when it names a port none of
// them has; pods coming, going, relabelled and finishing change it.
func TestSelection(t *testing.T) {
	const ns = "ps-sel"
	e := setup(t, "ps-sel-ctl", ns)
	web := map[string]string{"app": "web"}
	e.pod(t, ns, "web-1", podSpec{meshed: true, labels: web, ports: []string{"http"}})
	e.pod(t, ns, "web-2", podSpec{meshed: true, labels: web, ports: []string{"http", "admin"}})
	// Matching pods that do not count: no proxy, the node's network, and
	// one that finished.
	e.pod(t, ns, "plain", podSpec{labels: web, ports: []string{"grpc"}})
	e.pod(t, ns, "host", podSpec{meshed: true, hostNetwork: true, labels: web, ports: []string{"grpc"}})
	e.pod(t, ns, "done", podSpec{meshed: true, labels: web, ports: []string{"grpc"}})
	e.phase(t, ns, "done", corev1.PodSucceeded)
	e.pod(t, ns, "db", podSpec{meshed: true, labels: map[string]string{"app": "db"}, ports: []string{"sql"}})

	e.createPolicy(t, allow(ns, "web", selectApp("web"), intstr.FromString("http"), intstr.FromString("admin")))
	e.createPolicy(t, allow(ns, "nothing", selectApp("nope")))
	e.createPolicy(t, allow(ns, "ports", selectApp("web"), intstr.FromString("grpc"), intstr.FromString("http"), intstr.FromInt32(8080), intstr.FromString("sql")))
	e.createPolicy(t, allow(ns, "all", nil))
	e.startWriter(t, policystatus.WriterConfig{})

	pending := func(n int) string { return fmt.Sprintf("Enforced=False/Pending: 0/%d proxies enforce generation 1", n) }
	tests := []struct {
		name string
		want want
	}{
		{"web", want{"0/2", 1, []string{"ps-sel/web-1", "ps-sel/web-2"}, []string{accepted, "Resolved=True/Resolved: selects 2 meshed pods", pending(2)}}},
		{"nothing", want{"0/0", 1, []string{}, noWorkload}},
		// grpc is a port of pods that do not count; sql of a pod the
		// policy does not select.
		{"ports", want{"0/2", 1, nil, []string{accepted, `Resolved=False/UnresolvedPorts: no selected pod has a container port named "grpc", "sql"`, pending(2)}}},
		{"all", want{"0/3", 1, []string{"ps-sel/db", "ps-sel/web-1", "ps-sel/web-2"}, []string{accepted, "Resolved=True/Resolved: selects 3 meshed pods", pending(3)}}},
	}
	for _, tt := range tests {
		e.await(t, ns, tt.name, tt.want)
	}

	// web-2 becomes a db: web and ports lose it (and with it admin).
	p, err := e.admin.CoreV1().Pods(ns).Get(t.Context(), "web-2", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	p.Labels = map[string]string{"app": "db"}
	if _, err := e.admin.CoreV1().Pods(ns).Update(t.Context(), p, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	e.await(t, ns, "web", want{"0/1", 1, []string{"ps-sel/web-1"}, []string{accepted, `Resolved=False/UnresolvedPorts: no selected pod has a container port named "admin"`}})
	e.await(t, ns, "all", want{"0/3", 1, nil, []string{"Resolved=True/Resolved: selects 3 meshed pods"}})

	// web-1 goes: web selects nothing. db finishes: all has one left.
	if err := e.admin.CoreV1().Pods(ns).Delete(t.Context(), "web-1", metav1.DeleteOptions{GracePeriodSeconds: new(int64)}); err != nil {
		t.Fatal(err)
	}
	e.phase(t, ns, "db", corev1.PodFailed)
	e.await(t, ns, "web", want{"0/0", 1, []string{}, noWorkload})
	e.await(t, ns, "all", want{"0/1", 1, []string{"ps-sel/web-2"}, []string{"Resolved=True/Resolved: selects 1 meshed pod", pending(1)}})
	// A new meshed web pod is selected again.
	e.pod(t, ns, "web-3", podSpec{meshed: true, labels: web, ports: []string{"http", "admin"}})
	e.await(t, ns, "web", want{"0/1", 1, []string{"ps-sel/web-3"}, []string{accepted, "Resolved=True/Resolved: selects 1 meshed pod", pending(1)}})
}

// TestRootNamespace: a policy of the root namespace selects matching
// pods in every namespace.
func TestRootNamespace(t *testing.T) {
	e := setup(t, "ps-root-ctl", authz.RootNamespace, "ps-root-a", "ps-root-b")
	lbl := map[string]string{"app": "root-test"}
	e.pod(t, "ps-root-a", "one", podSpec{meshed: true, labels: lbl})
	e.pod(t, "ps-root-b", "two", podSpec{meshed: true, labels: lbl})
	e.pod(t, authz.RootNamespace, "three", podSpec{meshed: true, labels: lbl})
	e.pod(t, "ps-root-b", "unmeshed", podSpec{labels: lbl})
	e.createPolicy(t, allow(authz.RootNamespace, "root", selectApp("root-test")))
	// The same policy outside the root namespace selects only its own.
	e.createPolicy(t, allow("ps-root-a", "local", selectApp("root-test")))
	e.startWriter(t, policystatus.WriterConfig{})
	e.await(t, authz.RootNamespace, "root", want{"0/3", 1, []string{"mesh-system/three", "ps-root-a/one", "ps-root-b/two"}, []string{accepted, "Resolved=True/Resolved: selects 3 meshed pods"}})
	e.await(t, "ps-root-a", "local", want{"0/1", 1, []string{"ps-root-a/one"}, []string{accepted}})
	// A pod added in yet another namespace is the root policy's too.
	e.namespace(t, "ps-root-c")
	e.pod(t, "ps-root-c", "four", podSpec{meshed: true, labels: lbl})
	e.await(t, authz.RootNamespace, "root", want{"0/4", 1, []string{"mesh-system/three", "ps-root-a/one", "ps-root-b/two", "ps-root-c/four"}, nil})
}

// TestInvalid: a policy the CRD schema allows but authz.Validate refuses
// (stored bypassing the webhook) is not Accepted, with Validate's own
// message, and is never reported enforced, whatever a report claims.
func TestInvalid(t *testing.T) {
	const ns = "ps-invalid"
	e := setup(t, "ps-invalid-ctl", ns)
	e.pod(t, ns, "api", podSpec{meshed: true, labels: map[string]string{"app": "api"}})
	p := allow(ns, "doubled-slash", selectApp("api"))
	p.Spec.Rules = []v1alpha1.Rule{{To: []v1alpha1.Operation{{Paths: []string{"/a//b"}}}}, {To: []v1alpha1.Operation{{Methods: []string{"FETCH"}}}}}
	errs := validation.Validate(p)
	if len(errs) != 2 {
		t.Fatalf("authz.Validate found %d errors in the test policy, want 2: %v", len(errs), errs)
	}
	msg := errs.ToAggregate().Error()
	for _, field := range []string{"spec.rules[0].to[0].paths[0]", "spec.rules[1].to[0].methods[0]"} {
		if !strings.Contains(msg, field) {
			t.Fatalf("Validate's message %q does not name %s", msg, field)
		}
	}
	e.createPolicy(t, p)
	e.report(t, "liar", time.Now(), counts(ns+"/doubled-slash", map[int64]int32{1: 1}))
	e.startWriter(t, policystatus.WriterConfig{})
	got := e.await(t, ns, "doubled-slash", want{"1/1", 1, []string{"ps-invalid/api"}, []string{
		"Accepted=False/Invalid: " + msg,
		"Resolved=True/Resolved",
		"Enforced=False/Invalid: the policy is invalid, so no proxy enforces it"}})
	for _, c := range got.Status.Conditions {
		if c.Type == v1alpha1.ConditionAccepted && c.Message != msg {
			t.Errorf("Accepted message %q, want exactly %q", c.Message, msg)
		}
	}
}

// TestReportsSum: the fresh reports of every replica add up; stale ones,
// ones dated in the future, copies under another name, unreadable ones
// and counts of another generation do not count.
func TestReportsSum(t *testing.T) {
	const ns = "ps-sum"
	e := setup(t, "ps-sum-ctl", ns)
	for _, name := range []string{"a", "b", "c"} {
		e.pod(t, ns, name, podSpec{meshed: true, labels: map[string]string{"app": "api"}})
	}
	e.createPolicy(t, allow(ns, "api", selectApp("api")))
	key := ns + "/api"
	w := e.startWriter(t, policystatus.WriterConfig{})
	e.await(t, ns, "api", want{"0/3", 1, nil, []string{"Enforced=False/Pending: 0/3 proxies enforce generation 1"}})

	// What must not count is written first: the informer delivers changes
	// in order, so by the time the last good report shows, these were read.
	now := time.Now()
	e.report(t, "dead", now.Add(-time.Minute), counts(key, map[int64]int32{1: 3}))
	e.report(t, "ahead", now.Add(time.Hour), counts(key, map[int64]int32{1: 3}))
	e.report(t, "old-gen", now, counts(key, map[int64]int32{7: 3}))
	e.rawReport(t, "mesh-enforcement-bad", "{not json")
	b := fmt.Sprintf(`{"replica":"r1","updated":%q,"policies":{%q:{"1":3}}}`, now.Format(time.RFC3339), key)
	e.rawReport(t, "mesh-enforcement-copy-of-r1", b)
	e.report(t, "r1", now, counts(key, map[int64]int32{1: 1}))
	e.report(t, "r2", now, counts(key, map[int64]int32{1: 1}))
	e.await(t, ns, "api", want{"2/3", 1, nil, []string{"Enforced=False/Pending: 2/3 proxies enforce generation 1"}})
	if n := counter(t, w.metrics, "mesh_controller_enforcement_reports_refused_total", ""); n != 2 {
		t.Errorf("refused reports: %v, want 2 (unreadable, copy)", n)
	}

	e.report(t, "r2", time.Now(), counts(key, map[int64]int32{1: 2}))
	e.await(t, ns, "api", want{"3/3", 1, nil, []string{"Enforced=True/Enforced: 3/3 proxies enforce generation 1"}})

	// A replica that stops deletes its report: its proxies no longer count.
	if err := e.admin.CoreV1().ConfigMaps(e.ns).Delete(t.Context(), policystatus.ReportName("r2"), metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	e.await(t, ns, "api", want{"1/3", 1, nil, []string{"Enforced=False/Pending: 1/3 proxies enforce generation 1"}})
}

// TestGenerationBump: a new generation is Pending until the proxies'
// acknowledgements of it catch up; conditions whose status did not change
// keep their transition time; an unchanged status is not written again.
func TestGenerationBump(t *testing.T) {
	const ns = "ps-gen"
	e := setup(t, "ps-gen-ctl", ns)
	e.pod(t, ns, "x", podSpec{meshed: true, labels: map[string]string{"app": "x"}})
	e.createPolicy(t, allow(ns, "x", selectApp("x")))
	key := ns + "/x"
	e.report(t, "r1", time.Now(), counts(key, map[int64]int32{1: 1}))
	w := e.startWriter(t, policystatus.WriterConfig{})
	first := e.await(t, ns, "x", want{"1/1", 1, []string{"ps-gen/x"}, []string{accepted, "Resolved=True/Resolved", "Enforced=True/Enforced: 1/1 proxies enforce generation 1"}})

	// The printer columns show it.
	out, err := crdtest.Kubectl(t, e.c, "", "-n", ns, "get", "authorizationpolicies", "-o", "wide")
	if err != nil {
		t.Fatalf("kubectl get: %v\n%s", err, out)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 2 || strings.Join(strings.Fields(lines[0]), " ") != "NAME ACTION DRY-RUN ACCEPTED ENFORCED OBSERVED AGE" ||
		!strings.HasPrefix(strings.Join(strings.Fields(lines[1]), " "), "x ALLOW True 1/1 1 ") {
		t.Errorf("kubectl get -o wide:\n%s", out)
	}

	// A heartbeat with the same counts changes nothing, so nothing is
	// written.
	// (Policies of earlier tests may still be written, so the policy's
	// version tells, not the write count.)
	e.report(t, "r1", time.Now(), counts(key, map[int64]int32{1: 1}))
	time.Sleep(1500 * time.Millisecond)
	cur, err := e.policies.Get(t.Context(), ns, "x")
	if err != nil {
		t.Fatal(err)
	}
	if cur.ResourceVersion != first.ResourceVersion {
		t.Errorf("a heartbeat with the same counts rewrote the status: %+v", cur.Status)
	}
	if w.writes(t, "updated") < 1 {
		t.Error("the status was written but the writes metric did not count it")
	}

	cur.Spec.DryRun = true
	if _, err := e.policies.Update(t.Context(), cur); err != nil {
		t.Fatal(err)
	}
	second := e.await(t, ns, "x", want{"0/1", 2, nil, []string{accepted, "Resolved=True/Resolved", "Enforced=False/Pending: 0/1 proxies enforce generation 2"}})
	e.report(t, "r1", time.Now(), counts(key, map[int64]int32{2: 1}))
	third := e.await(t, ns, "x", want{"1/1", 2, nil, []string{accepted, "Enforced=True/Enforced: 1/1 proxies enforce generation 2"}})

	transition := func(p *v1alpha1.AuthorizationPolicy, typ string) metav1.Time {
		for _, c := range p.Status.Conditions {
			if c.Type == typ {
				return c.LastTransitionTime
			}
		}
		t.Fatalf("no %s condition", typ)
		return metav1.Time{}
	}
	for _, p := range []*v1alpha1.AuthorizationPolicy{second, third} {
		if a, b := transition(first, v1alpha1.ConditionAccepted), transition(p, v1alpha1.ConditionAccepted); !a.Equal(&b) {
			t.Errorf("Accepted stayed True but its transition time moved from %v to %v", a, b)
		}
	}
	e1, e2, e3 := transition(first, v1alpha1.ConditionEnforced), transition(second, v1alpha1.ConditionEnforced), transition(third, v1alpha1.ConditionEnforced)
	if e2.Before(&e1) || e2.Equal(&e1) || e3.Before(&e2) {
		t.Errorf("Enforced flipped twice but its transition times are %v, %v, %v", e1, e2, e3)
	}
}

// TestStaleReport: a replica that stops renewing its report (it died
// without deleting it) stops counting StaleAfter later, without any other
// change; renewed, it counts again.
func TestStaleReport(t *testing.T) {
	const ns = "ps-stale"
	e := setup(t, "ps-stale-ctl", ns)
	e.pod(t, ns, "x", podSpec{meshed: true, labels: map[string]string{"app": "x"}})
	e.createPolicy(t, allow(ns, "x", selectApp("x")))
	key := ns + "/x"
	const staleAfter = 2 * time.Second
	e.startWriter(t, policystatus.WriterConfig{StaleAfter: staleAfter})
	e.report(t, "r1", time.Now(), counts(key, map[int64]int32{1: 1}))
	e.await(t, ns, "x", want{"1/1", 1, nil, []string{"Enforced=True/Enforced"}})
	seen := time.Now()
	e.await(t, ns, "x", want{"0/1", 1, nil, []string{"Enforced=False/Pending: 0/1 proxies enforce generation 1"}})
	if time.Since(seen) > staleAfter+bound/2 {
		t.Errorf("the stale report was dropped %s after it was counted", time.Since(seen))
	}
	e.report(t, "r1", time.Now(), counts(key, map[int64]int32{1: 1}))
	e.await(t, ns, "x", want{"1/1", 1, nil, []string{"Enforced=True/Enforced"}})
}

// TestWriteRate: status writes, all policies together, stay within
// MaxWritesPerSecond.
func TestWriteRate(t *testing.T) {
	const ns = "ps-rate"
	e := setup(t, "ps-rate-ctl", ns)
	const n = 8
	for i := range n {
		e.createPolicy(t, allow(ns, fmt.Sprintf("p%d", i), selectApp("nothing")))
	}
	start := time.Now()
	// Two a second, a burst of two: eight writes take at least three
	// seconds (more if earlier tests' policies need writing too).
	e.startWriter(t, policystatus.WriterConfig{MaxWritesPerSecond: 2})
	versions := map[string]string{}
	for i := range n {
		name := fmt.Sprintf("p%d", i)
		versions[name] = e.await(t, ns, name, want{"0/0", 1, []string{}, noWorkload}).ResourceVersion
	}
	if took := time.Since(start); took < 2900*time.Millisecond {
		t.Errorf("%d status writes took %s at 2 a second", n, took)
	}
	// Each write comes back as a policy update and is reconciled again: a
	// status that read back differently (an empty list, a time) would be
	// written over and over. (Policies of earlier tests may still be
	// written, so the policies' versions tell, not the write count.)
	time.Sleep(2 * time.Second)
	for name, rv := range versions {
		p, err := e.policies.Get(t.Context(), ns, name)
		if err != nil {
			t.Fatal(err)
		}
		if p.ResourceVersion != rv {
			t.Errorf("%s written again with nothing changing: %+v", name, p.Status)
		}
	}
}
