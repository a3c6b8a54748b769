package policystatus

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/mesh-dev/mesh/authz/api/v1alpha1"
	"github.com/mesh-dev/mesh/controlplane/inventory"
)

func testPod(ns, name string, ports ...string) *corev1.Pod {
	c := corev1.Container{Name: "app"}
	for i, p := range ports {
		c.Ports = append(c.Ports, corev1.ContainerPort{Name: p, ContainerPort: int32(8080 + i)})
	}
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec:       corev1.PodSpec{NodeName: "n", Containers: []corev1.Container{c, {Name: inventory.ProxyContainer}}},
	}
}

func testPolicy(gen int64, ports ...intstr.IntOrString) *v1alpha1.AuthorizationPolicy {
	p := &v1alpha1.AuthorizationPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "web", Generation: gen},
		Spec:       v1alpha1.AuthorizationPolicySpec{Action: v1alpha1.Allow},
	}
	if len(ports) > 0 {
		p.Spec.Rules = []v1alpha1.Rule{{To: []v1alpha1.Operation{{Ports: ports[:1]}}}, {To: []v1alpha1.Operation{{Methods: []string{"GET"}}, {Ports: ports[1:]}}}}
	}
	return p
}

// cond is a condition's type=status/reason: message.
func cond(c metav1.Condition) string {
	return fmt.Sprintf("%s=%s/%s: %s", c.Type, c.Status, c.Reason, c.Message)
}

func TestStatusFor(t *testing.T) {
	two := []*corev1.Pod{testPod("shop", "web-b", "http"), testPod("shop", "web-a", "http", "admin")}
	var many []*corev1.Pod
	for i := range 25 {
		many = append(many, testPod("shop", fmt.Sprintf("web-%02d", 24-i)))
	}
	tests := []struct {
		name      string
		policy    *v1alpha1.AuthorizationPolicy
		facts     facts
		enforced  string
		workloads []string
		conds     []string
	}{
		{"all enforce", testPolicy(3, intstr.FromString("http"), intstr.FromInt32(9090)), facts{selected: two, enforcing: 2}, "2/2",
			[]string{"shop/web-a", "shop/web-b"}, []string{
				"Accepted=True/Accepted: the policy is valid",
				"Resolved=True/Resolved: selects 2 meshed pods",
				"Enforced=True/Enforced: 2/2 proxies enforce generation 3"}},
		{"one pending", testPolicy(3), facts{selected: two, enforcing: 1}, "1/2",
			[]string{"shop/web-a", "shop/web-b"}, []string{
				"Accepted=True/Accepted: the policy is valid",
				"Resolved=True/Resolved: selects 2 meshed pods",
				"Enforced=False/Pending: 1/2 proxies enforce generation 3"}},
		// A proxy reconnecting to another replica is counted by both for
		// a moment: never more enforced than selected.
		{"double count", testPolicy(1), facts{selected: two[:1], enforcing: 2}, "1/1",
			[]string{"shop/web-b"}, []string{
				"Accepted=True/Accepted: the policy is valid",
				"Resolved=True/Resolved: selects 1 meshed pod",
				"Enforced=True/Enforced: 1/1 proxies enforce generation 1"}},
		{"nothing selected", testPolicy(2), facts{enforcing: 4}, "0/0", nil, []string{
			"Accepted=True/Accepted: the policy is valid",
			"Resolved=False/NoWorkloads: selects no meshed pod",
			"Enforced=False/NoWorkloads: selects no meshed pod"}},
		// admin is a port of one pod: resolved. grpc and metrics are no
		// pod's; 9090 is a number.
		{"unresolved ports", testPolicy(1, intstr.FromString("metrics"), intstr.FromString("admin"), intstr.FromString("grpc"), intstr.FromInt32(9090), intstr.FromString("metrics")),
			facts{selected: two, enforcing: 2}, "2/2", []string{"shop/web-a", "shop/web-b"}, []string{
				"Accepted=True/Accepted: the policy is valid",
				`Resolved=False/UnresolvedPorts: no selected pod has a container port named "grpc", "metrics"`,
				"Enforced=True/Enforced: 2/2 proxies enforce generation 1"}},
		{"invalid", testPolicy(4), facts{invalid: "spec.rules[0]: bad", selected: two}, "0/2", []string{"shop/web-a", "shop/web-b"}, []string{
			"Accepted=False/Invalid: spec.rules[0]: bad",
			"Resolved=True/Resolved: selects 2 meshed pods",
			"Enforced=False/Invalid: the policy is invalid, so no proxy enforces it"}},
		{"bad selector", testPolicy(1), facts{invalid: "spec.selector: bad", badSelector: "bad op"}, "0/0", nil, []string{
			"Accepted=False/Invalid: spec.selector: bad",
			"Resolved=False/Invalid: the selector cannot be matched: bad op",
			"Enforced=False/Invalid: the policy is invalid, so no proxy enforces it"}},
		{"capped list", testPolicy(1), facts{selected: many, enforcing: 25}, "25/25",
			[]string{"shop/web-00", "shop/web-01", "shop/web-02", "shop/web-03", "shop/web-04", "shop/web-05", "shop/web-06",
				"shop/web-07", "shop/web-08", "shop/web-09", "shop/web-10", "shop/web-11", "shop/web-12", "shop/web-13",
				"shop/web-14", "shop/web-15", "shop/web-16", "shop/web-17", "shop/web-18", "shop/web-19"}, []string{
				"Accepted=True/Accepted: the policy is valid",
				"Resolved=True/Resolved: selects 25 meshed pods",
				"Enforced=True/Enforced: 25/25 proxies enforce generation 1"}},
	}
	now := metav1.NewTime(time.Date(2026, 11, 24, 10, 0, 0, 0, time.UTC))
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := statusFor(tt.policy, tt.facts, nil, now)
			if s.ObservedGeneration != tt.policy.Generation || s.Enforced != tt.enforced ||
				s.SelectedWorkloads != int32(len(tt.facts.selected)) || fmt.Sprintf("%d/%d", s.EnforcedWorkloads, s.SelectedWorkloads) != tt.enforced {
				t.Errorf("status = %+v, want enforced %s at generation %d", s, tt.enforced, tt.policy.Generation)
			}
			if !slices.Equal(s.Workloads, tt.workloads) {
				t.Errorf("workloads = %v, want %v", s.Workloads, tt.workloads)
			}
			var got []string
			for _, c := range s.Conditions {
				got = append(got, cond(c))
				if c.ObservedGeneration != tt.policy.Generation || !c.LastTransitionTime.Equal(&now) {
					t.Errorf("%s: generation %d, transition %v", c.Type, c.ObservedGeneration, c.LastTransitionTime)
				}
			}
			if !slices.Equal(got, tt.conds) {
				t.Errorf("conditions:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(tt.conds, "\n"))
			}
		})
	}
}

// TestTransitionTime: a condition keeps its lastTransitionTime while its
// status stays, whatever else of it changes, and gets the new time when
// its status flips.
func TestTransitionTime(t *testing.T) {
	t0 := metav1.NewTime(time.Date(2026, 11, 24, 10, 0, 0, 0, time.UTC))
	t1 := metav1.NewTime(t0.Add(time.Minute))
	pods := []*corev1.Pod{testPod("shop", "a"), testPod("shop", "b")}
	first := statusFor(testPolicy(1), facts{selected: pods, enforcing: 1}, nil, t0)
	// Generation 2, still pending (1/2 → 0/2), now enforced by neither:
	// every status is the same, so every time stays.
	second := statusFor(testPolicy(2), facts{selected: pods, enforcing: 0}, first.Conditions, t1)
	for i, c := range second.Conditions {
		if !c.LastTransitionTime.Equal(&t0) {
			t.Errorf("%s: transition %v, want it kept at %v", c.Type, c.LastTransitionTime, t0)
		}
		if c.Type != first.Conditions[i].Type {
			t.Fatalf("condition order changed: %s then %s", first.Conditions[i].Type, c.Type)
		}
	}
	if got := second.Conditions[2].Message; got != "0/2 proxies enforce generation 2" {
		t.Errorf("message %q not updated", got)
	}
	// Enforced flips to True: its time moves, the others' stay.
	third := statusFor(testPolicy(2), facts{selected: pods, enforcing: 2}, second.Conditions, t1)
	for _, c := range third.Conditions {
		want := t0
		if c.Type == v1alpha1.ConditionEnforced {
			want = t1
		}
		if !c.LastTransitionTime.Equal(&want) {
			t.Errorf("%s=%s: transition %v, want %v", c.Type, c.Status, c.LastTransitionTime, want)
		}
	}
}

func TestTruncate(t *testing.T) {
	tests := []struct {
		name string
		in   string
	}{
		{"short", "spec.rules[0]: bad"},
		{"exactly the limit", strings.Repeat("a", maxMessage)},
		{"long ascii", strings.Repeat("a", 3*maxMessage)},
		// Four-byte characters, so the cut must step back to a boundary.
		{"long utf-8", strings.Repeat("😀", maxMessage)},
	}
	for _, tt := range tests {
		got := truncate(tt.in)
		if len(tt.in) <= maxMessage {
			if got != tt.in {
				t.Errorf("%s: changed a message within the limit", tt.name)
			}
			continue
		}
		if len(got) > maxMessage || !strings.Contains(got, "more bytes)") || !strings.HasPrefix(tt.in, strings.Split(got, "...")[0]) {
			t.Errorf("%s: truncated to %d bytes: ...%q", tt.name, len(got), got[max(0, len(got)-40):])
		}
		if !utf8Valid(got) {
			t.Errorf("%s: cut inside a character", tt.name)
		}
	}
}

func utf8Valid(s string) bool { return strings.ToValidUTF8(s, "\uFFFD") == s }
