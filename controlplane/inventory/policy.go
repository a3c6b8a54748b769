package inventory

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"sort"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/tools/cache"

	"github.com/mesh-dev/mesh/authz"
	"github.com/mesh-dev/mesh/authz/api/v1alpha1"
	"github.com/mesh-dev/mesh/authz/validation"
	controlplanev1 "github.com/mesh-dev/mesh/controlplane/api/v1"
)

// ErrInvalidDeny is returned when an enforced DENY policy that applies to
// the pod fails validation (it got past the webhook: created while the
// webhook was down, or written by an older version). Leaving it out would
// allow what it denies, so the pod's policy is not changed until it is
// fixed; a pod that has no policy yet gets DenyAll.
var ErrInvalidDeny = errors.New("inventory: an enforced DENY policy that applies is invalid")

// DenyAll is the policy of a pod whose policy cannot be compiled safely.
func DenyAll() *controlplanev1.Policy {
	p := &controlplanev1.Policy{DefaultMode: string(authz.DefaultDeny), Warnings: []string{"an enforced DENY policy that applies is invalid: everything is denied until it is fixed"}}
	p.Version = version(p)
	return p
}

// Policy compiles pod ns/name's inbound policy with authz's own compiler:
// the policies of its namespace whose selector matches its labels and
// those of the root namespace, named ports resolved against its
// containers, and the default from its namespace's annotation (or label).
// An ALLOW, AUDIT or dry-run policy that fails validation is left out and
// named in the warnings (leaving out an ALLOW only denies more); an
// invalid enforced DENY gives ErrInvalidDeny.
func (inv *Inventory) Policy(ns, name string) (*controlplanev1.Policy, error) {
	pod, err := inv.pods.Pods(ns).Get(name)
	if err != nil {
		return nil, fmt.Errorf("inventory: pod %s/%s: %w", ns, name, err)
	}
	mode := inv.cfg.MeshDefault
	nsAnn := map[string]string{}
	if n, err := inv.nss.Get(ns); err == nil {
		// The annotation wins over a label of the same key.
		if v, ok := n.Labels[authz.DefaultPolicyAnnotation]; ok {
			nsAnn[authz.DefaultPolicyAnnotation] = v
		}
		if v, ok := n.Annotations[authz.DefaultPolicyAnnotation]; ok {
			nsAnn[authz.DefaultPolicyAnnotation] = v
		}
	}
	if v, ok := nsAnn[authz.DefaultPolicyAnnotation]; ok {
		m, err := authz.ParseDefaultMode(v)
		if err != nil {
			return nil, fmt.Errorf("inventory: namespace %s: %w", ns, err)
		}
		mode = m
	}
	ports := ContainerPorts(pod)
	var (
		applied  []v1alpha1.AuthorizationPolicy
		warnings []string
		invalid  error
	)
	for _, p := range inv.policiesFor(ns) {
		if p.Spec.Selector != nil {
			sel, err := metav1.LabelSelectorAsSelector(p.Spec.Selector)
			if err != nil || !sel.Matches(labels.Set(pod.Labels)) {
				continue
			}
		}
		if errs := validation.Validate(p); len(errs) > 0 {
			if p.Spec.Action == v1alpha1.Deny && !p.Spec.DryRun {
				invalid = errors.Join(invalid, fmt.Errorf("policy %s/%s: %w", p.Namespace, p.Name, errs.ToAggregate()))
				continue
			}
			warnings = append(warnings, fmt.Sprintf("policy %s/%s is invalid and not enforced: %v", p.Namespace, p.Name, errs.ToAggregate()))
			continue
		}
		applied = append(applied, resolve(p, ports))
	}
	if invalid != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalidDeny, invalid)
	}
	sort.Slice(applied, func(i, j int) bool {
		if applied[i].Namespace != applied[j].Namespace {
			return applied[i].Namespace < applied[j].Namespace
		}
		return applied[i].Name < applied[j].Name
	})
	// The proxy compiles the same input: compiling it here checks it, and
	// gives the warnings the proxy will see.
	t, err := authz.Compile(authz.Input{TrustDomain: inv.cfg.TrustDomain, MeshDefault: mode, Policies: validation.Policies(applied),
		Workload: authz.Workload{Namespace: ns, Pod: name}})
	if err != nil {
		return nil, err
	}
	out := &controlplanev1.Policy{DefaultMode: string(mode), Warnings: append(warnings, t.Warnings()...)}
	for i := range applied {
		p := &applied[i]
		b, err := json.Marshal(p)
		if err != nil {
			return nil, fmt.Errorf("inventory: policy %s/%s: %w", p.Namespace, p.Name, err)
		}
		out.Policies = append(out.Policies, b)
		out.Applied = append(out.Applied, &controlplanev1.PolicyRef{Namespace: p.Namespace, Name: p.Name, Generation: p.Generation})
	}
	out.Version = version(out)
	return out, nil
}

// policiesFor is the policies of namespace ns and of the root namespace.
func (inv *Inventory) policiesFor(ns string) []*v1alpha1.AuthorizationPolicy {
	var out []*v1alpha1.AuthorizationPolicy
	for _, n := range []string{ns, authz.RootNamespace} {
		objs, err := inv.policies.ByIndex(cache.NamespaceIndex, n)
		if err != nil {
			objs = nil
			for _, o := range inv.policies.List() {
				if p, ok := o.(*v1alpha1.AuthorizationPolicy); ok && p.Namespace == n {
					objs = append(objs, o)
				}
			}
		}
		for _, o := range objs {
			if p, ok := o.(*v1alpha1.AuthorizationPolicy); ok {
				out = append(out, p)
			}
		}
		if ns == authz.RootNamespace {
			break
		}
	}
	return out
}

// resolve is p as the proxy compiles it: only what decides requests
// (name, namespace, generation and spec), the selector cleared (it was
// matched here), and the pod's named ports replaced by their numbers. A
// name the pod does not have is kept: the compiler makes such a rule
// match nothing, here and in the proxy alike.
func resolve(p *v1alpha1.AuthorizationPolicy, ports map[string]uint16) v1alpha1.AuthorizationPolicy {
	out := v1alpha1.AuthorizationPolicy{
		TypeMeta:   metav1.TypeMeta{APIVersion: v1alpha1.GroupVersion.String(), Kind: "AuthorizationPolicy"},
		ObjectMeta: metav1.ObjectMeta{Name: p.Name, Namespace: p.Namespace, Generation: p.Generation},
	}
	p.Spec.DeepCopyInto(&out.Spec)
	out.Spec.Selector = nil
	for i := range out.Spec.Rules {
		for j := range out.Spec.Rules[i].To {
			op := &out.Spec.Rules[i].To[j]
			for k, port := range op.Ports {
				if port.Type == intstr.String {
					if n, ok := ports[port.StrVal]; ok {
						op.Ports[k] = intstr.FromInt32(int32(n))
					}
				}
			}
		}
	}
	return out
}

// version identifies a policy's content, the same on every replica.
func version(p *controlplanev1.Policy) string {
	h := sha256.New()
	h.Write([]byte(p.DefaultMode))
	for _, b := range p.Policies {
		fmt.Fprintf(h, "\x00%d\x00", len(b))
		h.Write(b)
	}
	for _, w := range p.Warnings {
		fmt.Fprintf(h, "\x01%s", w)
	}
	return hex.EncodeToString(h.Sum(nil))[:16]
}
