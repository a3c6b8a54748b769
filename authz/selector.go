package authz

import (
	"slices"

	"github.com/mesh-dev/mesh/internal/kubename"
)

// LabelSelector picks pods by their labels, as metav1.LabelSelector does
// (same JSON, same meaning): every matchLabels pair and every
// matchExpressions requirement must hold. An empty selector matches every
// pod.
type LabelSelector struct {
	MatchLabels      map[string]string          `json:"matchLabels,omitempty"`
	MatchExpressions []LabelSelectorRequirement `json:"matchExpressions,omitempty"`
}

// LabelSelectorRequirement is one requirement on a label.
type LabelSelectorRequirement struct {
	Key      string                `json:"key"`
	Operator LabelSelectorOperator `json:"operator"`
	Values   []string              `json:"values,omitempty"`
}

// LabelSelectorOperator relates a label to a requirement's values.
type LabelSelectorOperator string

// Operators.
const (
	LabelSelectorOpIn           LabelSelectorOperator = "In"
	LabelSelectorOpNotIn        LabelSelectorOperator = "NotIn"
	LabelSelectorOpExists       LabelSelectorOperator = "Exists"
	LabelSelectorOpDoesNotExist LabelSelectorOperator = "DoesNotExist"
)

// Matches reports whether labels satisfy s. It is meant for a selector
// that validateSelector accepts; an unknown operator matches nothing.
func (s *LabelSelector) Matches(labels map[string]string) bool {
	for k, v := range s.MatchLabels {
		if got, ok := labels[k]; !ok || got != v {
			return false
		}
	}
	for _, r := range s.MatchExpressions {
		v, ok := labels[r.Key]
		switch r.Operator {
		case LabelSelectorOpIn:
			if !ok || !slices.Contains(r.Values, v) {
				return false
			}
		case LabelSelectorOpNotIn:
			if ok && slices.Contains(r.Values, v) {
				return false
			}
		case LabelSelectorOpExists:
			if !ok {
				return false
			}
		case LabelSelectorOpDoesNotExist:
			if ok {
				return false
			}
		default:
			return false
		}
	}
	return true
}

// validateSelector checks s as metav1validation.ValidateLabelSelector does,
// with the same errors (origins included).
func validateSelector(s *LabelSelector, path fieldPath) ErrorList {
	var errs ErrorList
	ml := path.child("matchLabels")
	for k, v := range s.MatchLabels {
		for _, m := range kubename.LabelKey(k) {
			errs = append(errs, invalid(ml, k, m).withOrigin("format=k8s-label-key"))
		}
		for _, m := range kubename.LabelValue(v) {
			errs = append(errs, invalid(ml, v, m).withOrigin("format=k8s-label-value"))
		}
	}
	for i, r := range s.MatchExpressions {
		p := path.child("matchExpressions").index(i)
		switch r.Operator {
		case LabelSelectorOpIn, LabelSelectorOpNotIn:
			if len(r.Values) == 0 {
				errs = append(errs, required(p.child("values"), "must be specified when `operator` is 'In' or 'NotIn'"))
			}
		case LabelSelectorOpExists, LabelSelectorOpDoesNotExist:
			if len(r.Values) > 0 {
				errs = append(errs, forbidden(p.child("values"), "may not be specified when `operator` is 'Exists' or 'DoesNotExist'"))
			}
		default:
			errs = append(errs, invalid(p.child("operator"), r.Operator, "not a valid selector operator"))
		}
		for _, m := range kubename.LabelKey(r.Key) {
			errs = append(errs, invalid(p.child("key"), r.Key, m).withOrigin("format=k8s-label-key"))
		}
		for j, v := range r.Values {
			for _, m := range kubename.LabelValue(v) {
				errs = append(errs, invalid(p.child("values").index(j), v, m))
			}
		}
	}
	return errs
}
