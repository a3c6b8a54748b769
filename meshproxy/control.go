package meshproxy

import (
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/mesh-dev/mesh/authz"
	controlplanev1 "github.com/mesh-dev/mesh/controlplane/api/v1"
	"github.com/mesh-dev/mesh/controlplane/client"
	"github.com/mesh-dev/mesh/proxy"
)

// fileInfo is what /policy says of a table compiled from a file.
func fileInfo(t *authz.Table) *proxy.PolicyInfo {
	info := &proxy.PolicyInfo{Source: proxy.SourceFile, DefaultMode: string(t.DefaultMode()), Policies: []proxy.PolicyRef{}, Warnings: t.Warnings(), Since: time.Now()}
	for _, a := range t.Applied() {
		info.Policies = append(info.Policies, proxy.PolicyRef{Namespace: a.Namespace, Name: a.Name, Generation: a.Generation})
	}
	return info
}

// enforcePolicy returns the client's Policy callback: compile, swap in,
// record what is in force for /policy, log what the controller warned of.
func enforcePolicy(td spiffeid.TrustDomain, ns, pod string, enf *authz.Enforcer, inForce *atomic.Pointer[proxy.PolicyInfo], log *slog.Logger) func(*controlplanev1.Policy) error {
	return func(p *controlplanev1.Policy) error {
		t, err := client.CompilePolicy(td, ns, pod, p)
		if err != nil {
			log.Error("policy from the controller refused; the previous one stays in force", "version", p.GetVersion(), "err", err)
			return err
		}
		enf.Swap(t)
		info := &proxy.PolicyInfo{
			Source: proxy.SourceController, Version: p.GetVersion(), DefaultMode: p.GetDefaultMode(),
			Policies: make([]proxy.PolicyRef, 0, len(p.GetApplied())), Warnings: p.GetWarnings(), Since: time.Now(),
		}
		var names []string
		for _, r := range p.GetApplied() {
			info.Policies = append(info.Policies, proxy.PolicyRef{Namespace: r.GetNamespace(), Name: r.GetName(), Generation: r.GetGeneration()})
			names = append(names, fmt.Sprintf("%s/%s@%d", r.GetNamespace(), r.GetName(), r.GetGeneration()))
		}
		inForce.Store(info)
		log.Info("policy in force", "version", p.GetVersion(), "default", p.GetDefaultMode(), "policies", names)
		for _, w := range p.GetWarnings() {
			log.Warn("policy", "warning", w)
		}
		return nil
	}
}
