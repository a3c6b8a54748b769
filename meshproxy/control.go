package meshproxy

import (
	"fmt"
	"log/slog"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/mesh-dev/mesh/authz"
	controlplanev1 "github.com/mesh-dev/mesh/controlplane/api/v1"
	"github.com/mesh-dev/mesh/controlplane/client"
)

// enforcePolicy returns the client's Policy callback: compile, swap in,
// log what the controller warned of.
func enforcePolicy(td spiffeid.TrustDomain, ns, pod string, enf *authz.Enforcer, log *slog.Logger) func(*controlplanev1.Policy) error {
	return func(p *controlplanev1.Policy) error {
		t, err := client.CompilePolicy(td, ns, pod, p)
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
