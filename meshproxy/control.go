package meshproxy

import (
	"encoding/json"
	"fmt"
	"log/slog"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/mesh-dev/mesh/authz"
	"github.com/mesh-dev/mesh/authz/api/v1alpha1"
	controlplanev1 "github.com/mesh-dev/mesh/controlplane/api/v1"
)

// policyTable compiles the policy the controller pushed, with the same
// compiler the controller checked it with: the controller already matched
// the selectors and resolved the named ports, so every policy applies.
func policyTable(td spiffeid.TrustDomain, ns, pod string, p *controlplanev1.Policy) (*authz.Table, error) {
	mode, err := authz.ParseDefaultMode(p.GetDefaultMode())
	if err != nil {
		return nil, fmt.Errorf("policy %s: %w", p.GetVersion(), err)
	}
	policies := make([]v1alpha1.AuthorizationPolicy, len(p.GetPolicies()))
	for i, b := range p.GetPolicies() {
		if err := json.Unmarshal(b, &policies[i]); err != nil {
			return nil, fmt.Errorf("policy %s: entry %d: %w", p.GetVersion(), i, err)
		}
		if policies[i].Spec.Selector != nil {
			return nil, fmt.Errorf("policy %s: %s/%s still has a selector: the controller matches selectors", p.GetVersion(), policies[i].Namespace, policies[i].Name)
		}
	}
	return authz.Compile(authz.Input{TrustDomain: td, MeshDefault: mode, Policies: policies,
		Workload: authz.Workload{Namespace: ns, Pod: pod}})
}

// enforcePolicy returns the client's Policy callback: compile, swap in,
// log what the controller warned of.
func enforcePolicy(td spiffeid.TrustDomain, ns, pod string, enf *authz.Enforcer, log *slog.Logger) func(*controlplanev1.Policy) error {
	return func(p *controlplanev1.Policy) error {
		t, err := policyTable(td, ns, pod, p)
		if err != nil {
			log.Error("policy from the controller refused; the previous one stays in force", "version", p.GetVersion(), "err", err)
			return err
		}
		enf.Swap(t)
		var names []string
		for _, r := range p.GetApplied() {
			names = append(names, fmt.Sprintf("%s/%s@%d", r.GetNamespace(), r.GetName(), r.GetGeneration()))
		}
		log.Info("policy in force", "version", p.GetVersion(), "default", p.GetDefaultMode(), "policies", names)
		for _, w := range p.GetWarnings() {
			log.Warn("policy", "warning", w)
		}
		return nil
	}
}
