package authz

import (
	"fmt"
	"slices"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/apimachinery/pkg/util/validation/field"

	metav1validation "k8s.io/apimachinery/pkg/apis/meta/v1/validation"

	"github.com/mesh-dev/mesh/authz/api/v1alpha1"
	"github.com/mesh-dev/mesh/proxy/normalize"
)

// Methods are the HTTP methods a rule may name.
var Methods = []string{"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "CONNECT", "TRACE"}

// Validate checks a policy for everything the CRD schema cannot: SPIFFE IDs
// and their globs, names, methods, ports, paths and contradictions. Each
// error names its field.
func Validate(p *v1alpha1.AuthorizationPolicy) field.ErrorList {
	var errs field.ErrorList
	spec := field.NewPath("spec")
	switch p.Spec.Action {
	case v1alpha1.Allow, v1alpha1.Deny, v1alpha1.Audit:
	default:
		errs = append(errs, field.NotSupported(spec.Child("action"), p.Spec.Action, []string{"ALLOW", "DENY", "AUDIT"}))
	}
	if p.Spec.Selector != nil {
		errs = append(errs, metav1validation.ValidateLabelSelector(p.Spec.Selector, metav1validation.LabelSelectorValidationOptions{}, spec.Child("selector"))...)
	}
	if p.Spec.Action == v1alpha1.Deny && len(p.Spec.Rules) == 0 {
		errs = append(errs, field.Required(spec.Child("rules"), "a DENY policy needs at least one rule"))
	}
	for i, r := range p.Spec.Rules {
		errs = append(errs, validateRule(r, spec.Child("rules").Index(i))...)
	}
	return errs
}

func validateRule(r v1alpha1.Rule, path *field.Path) field.ErrorList {
	var errs field.ErrorList
	onlyUnauthenticated := len(r.From) > 0
	for i, s := range r.From {
		p := path.Child("from").Index(i)
		hasID := len(s.Identities)+len(s.Namespaces)+len(s.ServiceAccounts) > 0
		switch {
		case !hasID && !s.Unauthenticated:
			errs = append(errs, field.Required(p, "set identities, namespaces, serviceAccounts or unauthenticated"))
		case hasID && s.Unauthenticated:
			errs = append(errs, field.Invalid(p.Child("unauthenticated"), true, "cannot be combined with identities, namespaces or serviceAccounts: a plaintext caller has no identity"))
		}
		onlyUnauthenticated = onlyUnauthenticated && s.Unauthenticated && !hasID
		for j, id := range s.Identities {
			if err := checkIdentity(id); err != nil {
				errs = append(errs, field.Invalid(p.Child("identities").Index(j), id, err.Error()))
			}
		}
		for j, ns := range s.Namespaces {
			if e := validation.IsDNS1123Label(ns); len(e) > 0 {
				errs = append(errs, field.Invalid(p.Child("namespaces").Index(j), ns, strings.Join(e, "; ")))
			}
		}
		for j, sa := range s.ServiceAccounts {
			if e := validation.IsDNS1123Subdomain(sa); len(e) > 0 {
				errs = append(errs, field.Invalid(p.Child("serviceAccounts").Index(j), sa, strings.Join(e, "; ")))
			}
		}
	}
	for i, o := range r.To {
		p := path.Child("to").Index(i)
		if len(o.Ports)+len(o.Methods)+len(o.Paths) == 0 {
			errs = append(errs, field.Required(p, "set ports, methods or paths"))
		}
		if onlyUnauthenticated && len(o.Methods)+len(o.Paths) > 0 {
			errs = append(errs, field.Invalid(p, "methods/paths", "HTTP fields cannot apply to a rule whose callers are only unauthenticated"))
		}
		for j, port := range o.Ports {
			if err := checkPort(port); err != nil {
				errs = append(errs, field.Invalid(p.Child("ports").Index(j), port.String(), err.Error()))
			}
		}
		for j, m := range o.Methods {
			if !slices.Contains(Methods, m) {
				errs = append(errs, field.NotSupported(p.Child("methods").Index(j), m, Methods))
			}
		}
		for j, path := range o.Paths {
			if err := checkPath(path); err != nil {
				errs = append(errs, field.Invalid(p.Child("paths").Index(j), path, err.Error()))
			}
		}
	}
	return errs
}

// checkIdentity accepts a SPIFFE ID, or one ending in /* (a prefix of whole
// path segments).
func checkIdentity(id string) error {
	base, _ := strings.CutSuffix(id, "/*")
	if strings.Contains(base, "*") {
		return fmt.Errorf("a wildcard is allowed only as a whole last segment (/*)")
	}
	if _, err := spiffeid.FromString(base); err != nil {
		return fmt.Errorf("not a valid SPIFFE ID: %w", err)
	}
	return nil
}

func checkPort(p intstr.IntOrString) error {
	if p.Type == intstr.Int {
		if p.IntVal < 1 || p.IntVal > 65535 {
			return fmt.Errorf("port out of range 1-65535")
		}
		return nil
	}
	if e := validation.IsValidPortName(p.StrVal); len(e) > 0 {
		return fmt.Errorf("not a port number or container port name: %s", strings.Join(e, "; "))
	}
	return nil
}

// checkPath accepts an exact path, a prefix ending in *, a suffix starting
// with *, or * alone.
func checkPath(p string) error {
	switch {
	case p == "*":
		return nil
	case p == "":
		return fmt.Errorf("empty path")
	case strings.Count(p, "*") > 1, strings.Contains(strings.Trim(p, "*"), "*"):
		return fmt.Errorf("a wildcard is allowed only at the start or the end")
	case strings.HasPrefix(p, "*"):
		return nil
	case !strings.HasPrefix(p, "/"):
		return fmt.Errorf("must start with / (or * for a suffix)")
	}
	// The proxy matches the normalised path: a rule written otherwise
	// would never match anything.
	base := strings.TrimSuffix(p, "*")
	got, query, err := normalize.Path(base, normalize.DefaultMode)
	switch {
	case err != nil:
		return fmt.Errorf("not a path the proxy can match: %w", err)
	case query != "" || strings.Contains(base, "?"):
		return fmt.Errorf("paths match without the query string: remove %q", "?"+query)
	case got != base:
		return fmt.Errorf("the proxy matches normalised paths (dot segments removed, slashes merged, unreserved characters decoded): write %q", strings.Replace(p, base, got, 1))
	}
	return nil
}
