package meshctl

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

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
	got := readProxyPolicies(ctx, e.kube, pods)
	var lag, unread []string
	for i := range pods {
		p := &pods[i]
		name := p.Namespace + "/" + p.Name
		want, err := inv.Policy(p.Namespace, p.Name)
		switch {
		case errors.Is(err, inventory.ErrInvalidDeny):
			lag = append(lag, name+" (an enforced DENY policy that selects it is invalid, so the controller sends it nothing new: fix or delete that policy)")
			continue
		case err != nil:
			// The pod came or went between the two lists.
			unread = append(unread, fmt.Sprintf("%s (%v)", name, err))
			continue
		}
		if got[i].err != "" {
			unread = append(unread, fmt.Sprintf("%s (%s)", name, got[i].err))
			continue
		}
		if d := policyDiff(got[i].info, want); d != "" {
			lag = append(lag, fmt.Sprintf("%s (%s)", name, d))
		}
	}
	if len(lag)+len(unread) > 0 {
		msg := fmt.Sprintf("%d of %d proxies", len(lag)+len(unread), len(pods))
		if len(lag) > 0 {
			msg += "; lagging: " + listed(lag)
		}
		if len(unread) > 0 {
			msg += "; unreadable: " + listed(unread)
		}
		return "", errors.New(msg)
	}
	return fmt.Sprintf("%d %s", len(pods), plural(len(pods), "proxy", "proxies")), nil
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
	sem := make(chan struct{}, proxyReaders)
	var wg sync.WaitGroup
	for i := range pods {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			defer cancel()
			out[i] = readProxyPolicy(rctx, cs, &pods[i])
		})
	}
	wg.Wait()
	return out
}

func readProxyPolicy(ctx context.Context, cs kubernetes.Interface, p *corev1.Pod) proxyPolicy {
	port, _ := adminPort(p)
	raw, err := cs.CoreV1().Pods(p.Namespace).ProxyGet("http", p.Name, strconv.Itoa(port), "/policy", nil).DoRaw(ctx)
	if err != nil {
		return proxyPolicy{err: fmt.Sprintf("the proxy's admin endpoint (port %d) did not answer /policy through the API server: %v", port, err)}
	}
	var info proxy.PolicyInfo
	if err := json.Unmarshal(raw, &info); err != nil || info.Source == "" {
		return proxyPolicy{err: fmt.Sprintf("the proxy's /policy answered something meshctl cannot read: %v: %.200q", err, raw)}
	}
	return proxyPolicy{info: &info}
}
