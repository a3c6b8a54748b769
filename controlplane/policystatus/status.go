package policystatus

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/mesh-dev/mesh/authz/api/v1alpha1"
	"github.com/mesh-dev/mesh/controlplane/inventory"
)

// maxMessage bounds a condition's message (the CRD allows 32 KiB): a
// policy with a thousand bad rules is summarised, not copied.
const maxMessage = 8 << 10

// facts are what a policy's status is computed from.
type facts struct {
	// invalid is why the policy fails validation; "" when it passes.
	invalid string
	// badSelector is why its selector cannot be matched; "" when it can.
	badSelector string
	// selected are the live meshed pods it selects.
	selected []*corev1.Pod
	// enforcing is how many proxies acknowledged its current generation,
	// summed over the fresh reports (a proxy that reconnected to another
	// replica may be counted twice for a moment).
	enforcing int64
}

// statusFor computes p's status from f. A condition whose status is
// unchanged from old keeps its lastTransitionTime; the others get now.
func statusFor(p *v1alpha1.AuthorizationPolicy, f facts, old []metav1.Condition, now metav1.Time) v1alpha1.AuthorizationPolicyStatus {
	gen := p.Generation
	selected := int32(len(f.selected))
	enforced := int32(min(f.enforcing, int64(selected)))
	s := v1alpha1.AuthorizationPolicyStatus{
		ObservedGeneration: gen,
		SelectedWorkloads:  selected,
		EnforcedWorkloads:  enforced,
		Enforced:           fmt.Sprintf("%d/%d", enforced, selected),
		Workloads:          workloads(f.selected),
	}
	cond := func(typ string, ok bool, reason, msg string) metav1.Condition {
		st := metav1.ConditionFalse
		if ok {
			st = metav1.ConditionTrue
		}
		return metav1.Condition{Type: typ, Status: st, Reason: reason, Message: truncate(msg), ObservedGeneration: gen}
	}

	accepted := cond(v1alpha1.ConditionAccepted, true, v1alpha1.ReasonAccepted, "the policy is valid")
	if f.invalid != "" {
		accepted = cond(v1alpha1.ConditionAccepted, false, v1alpha1.ReasonInvalid, f.invalid)
	}

	var resolved metav1.Condition
	unresolved := unresolvedPorts(p, f.selected)
	switch {
	case f.badSelector != "":
		resolved = cond(v1alpha1.ConditionResolved, false, v1alpha1.ReasonInvalid, "the selector cannot be matched: "+f.badSelector)
	case selected == 0:
		resolved = cond(v1alpha1.ConditionResolved, false, v1alpha1.ReasonNoWorkloads, "selects no meshed pod")
	case len(unresolved) > 0:
		resolved = cond(v1alpha1.ConditionResolved, false, v1alpha1.ReasonUnresolvedPorts, "no selected pod has a container port named "+quoteList(unresolved))
	default:
		resolved = cond(v1alpha1.ConditionResolved, true, v1alpha1.ReasonResolved, fmt.Sprintf("selects %d meshed %s", selected, plural(selected, "pod", "pods")))
	}

	var enf metav1.Condition
	counted := fmt.Sprintf("%d/%d proxies enforce generation %d", enforced, selected, gen)
	switch {
	case f.invalid != "" || f.badSelector != "":
		// The controller hands proxies no invalid policy, so none will
		// ever acknowledge this generation: not Pending.
		enf = cond(v1alpha1.ConditionEnforced, false, v1alpha1.ReasonInvalid, "the policy is invalid, so no proxy enforces it")
	case selected == 0:
		enf = cond(v1alpha1.ConditionEnforced, false, v1alpha1.ReasonNoWorkloads, "selects no meshed pod")
	case enforced == selected:
		enf = cond(v1alpha1.ConditionEnforced, true, v1alpha1.ReasonEnforced, counted)
	default:
		enf = cond(v1alpha1.ConditionEnforced, false, v1alpha1.ReasonPending, counted)
	}

	s.Conditions = []metav1.Condition{accepted, resolved, enf}
	for i := range s.Conditions {
		c := &s.Conditions[i]
		c.LastTransitionTime = now
		for _, o := range old {
			if o.Type == c.Type && o.Status == c.Status {
				c.LastTransitionTime = o.LastTransitionTime
			}
		}
	}
	return s
}

// workloads names the pods namespace/name, sorted, at most
// v1alpha1.MaxStatusWorkloads of them.
func workloads(pods []*corev1.Pod) []string {
	names := make([]string, 0, len(pods))
	for _, p := range pods {
		names = append(names, p.Namespace+"/"+p.Name)
	}
	slices.Sort(names)
	if len(names) > v1alpha1.MaxStatusWorkloads {
		names = names[:v1alpha1.MaxStatusWorkloads]
	}
	return names
}

// unresolvedPorts are the port names in p's rules that no pod of selected
// has, sorted. The compiler makes a rule entry naming such a port match
// nothing: in an ALLOW policy that silently allows less, which the status
// must say.
func unresolvedPorts(p *v1alpha1.AuthorizationPolicy, selected []*corev1.Pod) []string {
	wanted := map[string]bool{}
	for _, r := range p.Spec.Rules {
		for _, op := range r.To {
			for _, port := range op.Ports {
				if port.Type == intstr.String {
					wanted[port.StrVal] = true
				}
			}
		}
	}
	if len(wanted) == 0 {
		return nil
	}
	for _, pod := range selected {
		for name := range inventory.ContainerPorts(pod) {
			delete(wanted, name)
		}
		if len(wanted) == 0 {
			return nil
		}
	}
	out := make([]string, 0, len(wanted))
	for name := range wanted {
		out = append(out, name)
	}
	slices.Sort(out)
	return out
}

func quoteList(names []string) string {
	q := make([]string, len(names))
	for i, n := range names {
		q[i] = strconv.Quote(n)
	}
	return strings.Join(q, ", ")
}

func plural(n int32, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}

// truncate cuts s to maxMessage bytes at a character boundary, saying how
// much was cut.
func truncate(s string) string {
	if len(s) <= maxMessage {
		return s
	}
	const suffix = "... (%d more bytes)"
	cut := maxMessage - len(suffix) - 10
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + fmt.Sprintf(suffix, len(s)-cut)
}
