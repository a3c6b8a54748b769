package authz

import (
	"fmt"
	"slices"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/mesh-dev/mesh/internal/intorstr"
	"github.com/mesh-dev/mesh/internal/kubename"
	"github.com/mesh-dev/mesh/proxy/normalize"
)

// Methods are the HTTP methods a rule may name.
var Methods = []string{"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "CONNECT", "TRACE"}

// Validate checks a policy for everything the CRD schema cannot: SPIFFE IDs
// and their globs, names, methods, ports, paths and contradictions. Each
// error names its field. The webhook, the controller and meshctl get the
// same errors as a field.ErrorList from authz/validation.
func Validate(p *Policy) ErrorList {
	var errs ErrorList
	spec := fieldPath("spec")
	switch p.Spec.Action {
	case Allow, Deny, Audit:
	default:
		errs = append(errs, notSupported(spec.child("action"), p.Spec.Action, []string{"ALLOW", "DENY", "AUDIT"}))
	}
	if p.Spec.Selector != nil {
		errs = append(errs, validateSelector(p.Spec.Selector, spec.child("selector"))...)
	}
	if p.Spec.Action == Deny && len(p.Spec.Rules) == 0 {
		errs = append(errs, required(spec.child("rules"), "a DENY policy needs at least one rule"))
	}
	for i, r := range p.Spec.Rules {
		errs = append(errs, validateRule(r, spec.child("rules").index(i))...)
	}
	return errs
}

func validateRule(r Rule, path fieldPath) ErrorList {
	var errs ErrorList
	onlyUnauthenticated := len(r.From) > 0
	for i, s := range r.From {
		p := path.child("from").index(i)
		hasID := len(s.Identities)+len(s.Namespaces)+len(s.ServiceAccounts) > 0
		switch {
		case !hasID && !s.Unauthenticated:
			errs = append(errs, required(p, "set identities, namespaces, serviceAccounts or unauthenticated"))
		case hasID && s.Unauthenticated:
			errs = append(errs, invalid(p.child("unauthenticated"), true, "cannot be combined with identities, namespaces or serviceAccounts: a plaintext caller has no identity"))
		}
		onlyUnauthenticated = onlyUnauthenticated && s.Unauthenticated && !hasID
		for j, id := range s.Identities {
			if err := checkIdentity(id); err != nil {
				errs = append(errs, invalid(p.child("identities").index(j), id, err.Error()))
			}
		}
		for j, ns := range s.Namespaces {
			if e := kubename.DNS1123Label(ns); len(e) > 0 {
				errs = append(errs, invalid(p.child("namespaces").index(j), ns, strings.Join(e, "; ")))
			}
		}
		for j, sa := range s.ServiceAccounts {
			if e := kubename.DNS1123Subdomain(sa); len(e) > 0 {
				errs = append(errs, invalid(p.child("serviceAccounts").index(j), sa, strings.Join(e, "; ")))
			}
		}
	}
	for i, o := range r.To {
		p := path.child("to").index(i)
		if len(o.Ports)+len(o.Methods)+len(o.Paths) == 0 {
			errs = append(errs, required(p, "set ports, methods or paths"))
		}
		if onlyUnauthenticated && len(o.Methods)+len(o.Paths) > 0 {
			errs = append(errs, invalid(p, "methods/paths", "HTTP fields cannot apply to a rule whose callers are only unauthenticated"))
		}
		for j, port := range o.Ports {
			if err := checkPort(port); err != nil {
				errs = append(errs, invalid(p.child("ports").index(j), port.String(), err.Error()))
			}
		}
		for j, m := range o.Methods {
			if !slices.Contains(Methods, m) {
				errs = append(errs, notSupported(p.child("methods").index(j), m, Methods))
			}
		}
		for j, path := range o.Paths {
			if err := checkPath(path); err != nil {
				errs = append(errs, invalid(p.child("paths").index(j), path, err.Error()))
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

func checkPort(p intorstr.IntOrString) error {
	if p.Type == intorstr.Int {
		if p.IntVal < 1 || p.IntVal > 65535 {
			return fmt.Errorf("port out of range 1-65535")
		}
		return nil
	}
	if e := kubename.PortName(p.StrVal); len(e) > 0 {
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
