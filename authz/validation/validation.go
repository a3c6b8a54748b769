// Package validation is authz's policy checks for the Kubernetes side of
// the mesh (the admission webhook, mesh-controller and meshctl): it
// converts v1alpha1 AuthorizationPolicies to authz.Policy and reports
// authz.Validate's errors as a field.ErrorList, with the same paths and
// messages. It is apart from authz so that the proxy, which compiles
// authz.Policy, does not link apimachinery.
package validation

import (
	"k8s.io/apimachinery/pkg/util/validation/field"

	"github.com/mesh-dev/mesh/authz"
	"github.com/mesh-dev/mesh/authz/api/v1alpha1"
	"github.com/mesh-dev/mesh/internal/intorstr"
)

// Validate checks p with authz.Validate.
func Validate(p *v1alpha1.AuthorizationPolicy) field.ErrorList {
	q := Policy(p)
	return ErrorList(authz.Validate(&q))
}

// ErrorList is errs as apimachinery's type: the same types, paths, values,
// details and origins, so the same text.
func ErrorList(errs authz.ErrorList) field.ErrorList {
	if len(errs) == 0 {
		return nil
	}
	out := make(field.ErrorList, len(errs))
	for i, e := range errs {
		out[i] = &field.Error{Type: field.ErrorType(e.Type), Field: e.Field, BadValue: e.BadValue, Detail: e.Detail, Origin: e.Origin}
	}
	return out
}

// Policies converts each of ps with Policy.
func Policies(ps []v1alpha1.AuthorizationPolicy) []authz.Policy {
	out := make([]authz.Policy, len(ps))
	for i := range ps {
		out[i] = Policy(&ps[i])
	}
	return out
}

// Policy is p as authz compiles it: kind, name, namespace, generation and
// spec. It shares no memory with p that authz could change.
func Policy(p *v1alpha1.AuthorizationPolicy) authz.Policy {
	out := authz.Policy{TypeMeta: authz.TypeMeta{Kind: p.Kind, APIVersion: p.APIVersion}}
	out.Name, out.Namespace, out.Generation = p.Name, p.Namespace, p.Generation
	out.Spec = authz.PolicySpec{Action: authz.Action(p.Spec.Action), DryRun: p.Spec.DryRun}
	if s := p.Spec.Selector; s != nil {
		out.Spec.Selector = &authz.LabelSelector{}
		if s.MatchLabels != nil {
			out.Spec.Selector.MatchLabels = make(map[string]string, len(s.MatchLabels))
			for k, v := range s.MatchLabels {
				out.Spec.Selector.MatchLabels[k] = v
			}
		}
		if s.MatchExpressions != nil {
			out.Spec.Selector.MatchExpressions = make([]authz.LabelSelectorRequirement, len(s.MatchExpressions))
		}
		for i, r := range s.MatchExpressions {
			out.Spec.Selector.MatchExpressions[i] = authz.LabelSelectorRequirement{
				Key: r.Key, Operator: authz.LabelSelectorOperator(r.Operator), Values: clone(r.Values)}
		}
	}
	if p.Spec.Rules != nil {
		out.Spec.Rules = make([]authz.Rule, len(p.Spec.Rules))
	}
	for i, r := range p.Spec.Rules {
		var cr authz.Rule
		if r.From != nil {
			cr.From = make([]authz.Source, len(r.From))
		}
		for j, s := range r.From {
			cr.From[j] = authz.Source{Identities: clone(s.Identities), Namespaces: clone(s.Namespaces),
				ServiceAccounts: clone(s.ServiceAccounts), Unauthenticated: s.Unauthenticated}
		}
		if r.To != nil {
			cr.To = make([]authz.Operation, len(r.To))
		}
		for j, o := range r.To {
			co := authz.Operation{Methods: clone(o.Methods), Paths: clone(o.Paths)}
			if o.Ports != nil {
				co.Ports = make([]intorstr.IntOrString, len(o.Ports))
			}
			for k, port := range o.Ports {
				co.Ports[k] = intorstr.IntOrString{Type: intorstr.Type(port.Type), IntVal: port.IntVal, StrVal: port.StrVal}
			}
			cr.To[j] = co
		}
		out.Spec.Rules[i] = cr
	}
	return out
}

// clone copies s, keeping nil nil.
func clone(s []string) []string {
	if s == nil {
		return nil
	}
	return append([]string{}, s...)
}
