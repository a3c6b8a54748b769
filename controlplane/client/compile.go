package client

import (
	"fmt"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/mesh-dev/mesh/authz"
	controlplanev1 "github.com/mesh-dev/mesh/controlplane/api/v1"
)

// CompilePolicy compiles a Policy the controller pushed, with the same
// compiler the controller checked it with: the controller already matched
// the selectors and resolved the named ports, so every policy applies. mesh-proxy enforces
// what it returns; meshctl policy check evaluates it the same way.
func CompilePolicy(td spiffeid.TrustDomain, ns, pod string, p *controlplanev1.Policy) (*authz.Table, error) {
	mode, err := authz.ParseDefaultMode(p.GetDefaultMode())
	if err != nil {
		return nil, fmt.Errorf("policy %s: %w", p.GetVersion(), err)
	}
	policies := make([]authz.Policy, len(p.GetPolicies()))
	for i, b := range p.GetPolicies() {
		if policies[i], err = authz.DecodePolicy(b); err != nil {
			return nil, fmt.Errorf("policy %s: entry %d: %w", p.GetVersion(), i, err)
		}
		if policies[i].Spec.Selector != nil {
			return nil, fmt.Errorf("policy %s: %s/%s still has a selector: the controller matches selectors", p.GetVersion(), policies[i].Namespace, policies[i].Name)
		}
	}
	return authz.Compile(authz.Input{TrustDomain: td, MeshDefault: mode, Policies: policies,
		Workload: authz.Workload{Namespace: ns, Pod: pod}})
}
