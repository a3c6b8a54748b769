package meshctl

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"

	controlplanev1 "github.com/mesh-dev/mesh/controlplane/api/v1"
	"github.com/mesh-dev/mesh/controlplane/inventory"
	"github.com/mesh-dev/mesh/proxy"
)

// checkProxiesPolicyCurrent compares, pod by pod, the policy each proxy
// says it enforces (its admin endpoint's /policy) with the one the
// controller computes for the pod now, computed here with the
// controller's own inventory. Unlike the policies' status, which counts
// acknowledgements per policy and lists at most 20 pods, it names every
// proxy that lags and says how.
func checkProxiesPolicyCurrent(ctx context.Context, e *checkEnv) (string, error) {
	pods, err := meshedPods(ctx, e.kube)
	if err != nil {
		return "", err
	}
	if len(pods) == 0 {
		return "no meshed pods", nil
	}
	mesh, _, err := readMeshConfig(ctx, e.kube, e.meshNS)
	if err != nil {
		return "", err
	}
	inv, stop, err := runInventory(ctx, mesh, informers.NewSharedInformerFactory(e.kube, 0), e.policyInformer())
	if err != nil {
		return "", err
	}
	defer stop()
	var lag, unread []string
	for _, r := range comparePolicies(ctx, e.kube, inv, pods) {
		name := r.Namespace + "/" + r.Pod
		switch {
		case r.Error != "":
			unread = append(unread, fmt.Sprintf("%s (%s)", name, r.Error))
		case !r.Current:
			lag = append(lag, fmt.Sprintf("%s (%s)", name, r.Difference))
		}
	}
	if err := proxiesFailed(len(pods), "lagging", lag, unread); err != nil {
		return "", err
	}
	return fmt.Sprintf("%d %s", len(pods), plural(len(pods), "proxy", "proxies")), nil
}

// PodPolicy is one pod's entry of `meshctl policy show -o json|yaml`: the
// policy its proxy enforces beside the one the controller computes for it
// now.
type PodPolicy struct {
	Namespace string `json:"namespace"`
	Pod       string `json:"pod"`
	// Proxy is what the pod's proxy says it enforces (its /policy).
	Proxy *proxy.PolicyInfo `json:"proxy,omitempty"`
	// Controller is what the controller computes for the pod now.
	Controller *ControllerPolicy `json:"controller,omitempty"`
	// Current: the proxy enforces what the controller computes.
	Current bool `json:"current"`
	// Difference says how they differ when they do.
	Difference string `json:"difference,omitempty"`
	// Error says why either could not be read.
	Error string `json:"error,omitempty"`
}

// ControllerPolicy is the policy the controller computes for a pod, by
// the same names as the proxy's.
type ControllerPolicy struct {
	Version     string            `json:"version"`
	DefaultMode string            `json:"defaultMode"`
	Policies    []proxy.PolicyRef `json:"policies"`
	Warnings    []string          `json:"warnings,omitempty"`
}

// comparePolicies reads each pod's proxy policy and compares it with what
// the inventory computes for the pod, in the pods' order.
func comparePolicies(ctx context.Context, cs kubernetes.Interface, inv *inventory.Inventory, pods []corev1.Pod) []PodPolicy {
	got := readProxyPolicies(ctx, cs, pods)
	out := make([]PodPolicy, len(pods))
	for i := range pods {
		p, r := &pods[i], &out[i]
		r.Namespace, r.Pod, r.Proxy = p.Namespace, p.Name, got[i].info
		want, err := inv.Policy(p.Namespace, p.Name)
		switch {
		case got[i].err != "":
			r.Error = got[i].err
		case errors.Is(err, inventory.ErrInvalidDeny):
			r.Difference = "an enforced DENY policy that selects it is invalid, so the controller sends it nothing new: fix or delete that policy (" + err.Error() + ")"
		case err != nil:
			// The pod came or went between the two readings.
			r.Error = err.Error()
		default:
			r.Controller = &ControllerPolicy{Version: want.GetVersion(), DefaultMode: want.GetDefaultMode(), Policies: []proxy.PolicyRef{}, Warnings: want.GetWarnings()}
			for _, a := range want.GetApplied() {
				r.Controller.Policies = append(r.Controller.Policies, proxy.PolicyRef{Namespace: a.GetNamespace(), Name: a.GetName(), Generation: a.GetGeneration()})
			}
			r.Difference = policyDiff(got[i].info, want)
			r.Current = r.Difference == ""
		}
	}
	return out
}

// policyDiff says how the policy a proxy enforces differs from the one
// the controller computes for its pod; "" when it is the same.
func policyDiff(got *proxy.PolicyInfo, want *controlplanev1.Policy) string {
	if got.Source != proxy.SourceController {
		return fmt.Sprintf("enforces policy from %q, not the controller's", got.Source)
	}
	if got.Version == want.GetVersion() {
		return ""
	}
	have := map[string]int64{}
	for _, r := range got.Policies {
		have[r.Namespace+"/"+r.Name] = r.Generation
	}
	var diffs []string
	for _, r := range want.GetApplied() {
		key := r.GetNamespace() + "/" + r.GetName()
		g, ok := have[key]
		switch {
		case !ok:
			diffs = append(diffs, "lacks "+key)
		case g != r.GetGeneration():
			diffs = append(diffs, fmt.Sprintf("enforces %s at generation %d, not %d", key, g, r.GetGeneration()))
		}
		delete(have, key)
	}
	extra := make([]string, 0, len(have))
	for key := range have {
		extra = append(extra, key)
	}
	slices.Sort(extra)
	for _, key := range extra {
		diffs = append(diffs, "still enforces "+key)
	}
	if got.DefaultMode != want.GetDefaultMode() {
		diffs = append(diffs, fmt.Sprintf("default %s, not %s", got.DefaultMode, want.GetDefaultMode()))
	}
	if len(diffs) == 0 {
		// Same policies and default: a named port or a warning changed.
		diffs = append(diffs, "the same policies, compiled for an older version of the pod or its policies")
	}
	return fmt.Sprintf("%s; version %s, the controller's %s", strings.Join(diffs, ", "), shortVersion(got.Version), shortVersion(want.GetVersion()))
}

// shortVersion is enough of a policy version to tell two apart.
func shortVersion(v string) string {
	if len(v) > 12 {
		return v[:12]
	}
	if v == "" {
		return `""`
	}
	return v
}

// proxyPolicy is one proxy's /policy, or why it could not be read.
type proxyPolicy struct {
	info *proxy.PolicyInfo
	err  string
}

// readProxyPolicies reads every pod's /policy through the API server, a
// few at a time, in the pods' order.
func readProxyPolicies(ctx context.Context, cs kubernetes.Interface, pods []corev1.Pod) []proxyPolicy {
	out := make([]proxyPolicy, len(pods))
	eachProxy(ctx, pods, func(ctx context.Context, i int) { out[i] = readProxyPolicy(ctx, cs, &pods[i]) })
	return out
}

func readProxyPolicy(ctx context.Context, cs kubernetes.Interface, p *corev1.Pod) proxyPolicy {
	var info proxy.PolicyInfo
	if err := readAdmin(ctx, cs, p, "/policy", &info, func() bool { return info.Source != "" }); err != "" {
		return proxyPolicy{err: err}
	}
	cleanPolicy(&info)
	return proxyPolicy{info: &info}
}
