package meshctl

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"

	"github.com/mesh-dev/mesh/authz/api/v1alpha1"
	"github.com/mesh-dev/mesh/ca"
	"github.com/mesh-dev/mesh/controlplane/inventory"
	"github.com/mesh-dev/mesh/inject"
)

// meshCategories are `meshctl check`'s, after install.
func meshCategories() []category {
	return []category{
		apiCategory(),
		{name: "mesh-crds", checkers: []checker{
			{
				description: "CRD " + crdName + " is installed and established",
				hint:        "install mesh with helm (the chart's crds/ holds it): helm install mesh charts/mesh -n mesh-system --create-namespace",
				run:         checkCRDEstablished,
			},
		}},
		{name: "mesh-controller", checkers: []checker{
			{
				description: "the controller Deployment has a ready replica",
				hint:        "kubectl -n MESH_NAMESPACE get deploy,pods -l app.kubernetes.io/name=mesh-controller, and kubectl logs its pods; scale it up if it is at 0",
				run:         checkControllerReady,
			},
			{
				description: "the leader Lease is held by a live controller pod",
				hint:        "no replica leads: issuer rotation and policy status stop; check the controller's pods and their logs (kubectl -n MESH_NAMESPACE logs -l app.kubernetes.io/name=mesh-controller)",
				run:         checkLeader,
			},
		}},
		{name: "mesh-webhooks", checkers: []checker{
			{
				description: "the webhook configurations exist and have a caBundle",
				hint:        "the controller fills the caBundle in within a minute of starting; if it stays empty, check the controller's logs; if a configuration is missing, helm upgrade mesh",
				run:         checkWebhookConfigs,
			},
			{
				description: "the policy webhook refuses an invalid AuthorizationPolicy (server-side dry run)",
				hint:        "the API server could not reach the controller's webhook (Service mesh-webhook in MESH_NAMESPACE): check the controller's pods and endpoints; while it is down, policies cannot be created or changed",
				run:         checkPolicyWebhookRefuses,
			},
			{
				description: "the policy webhook accepts a valid AuthorizationPolicy (server-side dry run)",
				hint:        "check the controller's pods, endpoints and logs; this check needs create on authorizationpolicies in MESH_NAMESPACE (a dry run stores nothing)",
				run:         checkPolicyWebhookAccepts,
			},
			{
				description: "the injector adds the proxy to a pod (server-side dry run)",
				hint:        "pods are created without a proxy while the injector is unreachable (failurePolicy Ignore): check the controller's pods and endpoints; pods created meanwhile need recreating",
				run:         checkInjector,
			},
		}},
		{name: "mesh-ca", checkers: []checker{
			{
				description: "the CA status is published and fresh",
				hint:        "the leader rewrites ConfigMap mesh-ca-status every minute: check that a controller leads (the mesh-controller checks above)",
				run:         checkCAStatusFresh,
			},
			{
				description: "the CA's active root is valid for more than --root-margin",
				hint:        "rotate the root: meshctl ca rotate (or replace your existing CA Secret's root); --root-margin sets the margin",
				run:         checkRoot,
			},
			{
				description: "the CA's issuer is valid for more than --issuer-margin",
				hint:        "the leader replaces the issuer at five sixths of its life: check the controller's logs; meshctl ca rotate --issuer replaces it now; --issuer-margin sets the margin",
				run:         checkIssuer,
			},
		}},
		{name: "mesh-data-plane", checkers: []checker{
			{
				description: "every meshed pod's proxy is ready and serves a valid SVID",
				hint:        "meshctl identity show -n NAMESPACE pod/NAME says what the proxy serves; kubectl logs -c mesh-proxy says why it is not ready",
				run:         checkProxiesReady,
			},
			{
				description: "every proxy trusts every root of the CA",
				hint:        "a proxy that lacks a root refuses peers with SVIDs under it: proxies pick up the trust bundle within seconds; restart a pod that stays behind",
				run:         checkProxiesTrustRoots,
			},
			{
				description: "every proxy enforces the policy the controller computes for its pod",
				hint:        "a proxy that lags is not connected to a controller, or refused the policy: kubectl logs -c mesh-proxy says which (\"policy in force\" and \"policy refused\" lines); check the controller's pods and logs",
				run:         checkProxiesPolicyCurrent,
			},
			{
				description: "every policy's status counts its current generation enforced",
				hint:        "kubectl get authorizationpolicies -A shows ENFORCED n/m; the leader writes it from the proxies' acknowledgements: check that a controller leads and that the proxies above are current",
				run:         checkPolicyEnforced,
			},
		}},
	}
}

func checkCRDEstablished(ctx context.Context, e *checkEnv) (string, error) {
	u, err := e.dyn.Resource(crdGVR).Get(ctx, crdName, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return "", fmt.Errorf("not found")
	}
	if err != nil {
		return "", fmt.Errorf("get CRD %s: %w", crdName, err)
	}
	if !crdServes(u, policyGVR.Version) {
		return "", fmt.Errorf("it does not serve %s, the version this meshctl knows (it serves %s)", policyGVR.Version, strings.Join(crdVersions(u), ", "))
	}
	if st, msg := crdCondition(u, "Established"); st != "True" {
		return "", fmt.Errorf("not established: %s", msg)
	}
	return "serves " + policyGVR.Version, nil
}

// crdVersions are the names of a CRD's served versions.
func crdVersions(u *unstructured.Unstructured) []string {
	vs, _, _ := unstructured.NestedSlice(u.Object, "spec", "versions")
	var out []string
	for _, v := range vs {
		m, ok := v.(map[string]any)
		if !ok {
			continue
		}
		if served, _ := m["served"].(bool); served {
			if name, _ := m["name"].(string); name != "" {
				out = append(out, name)
			}
		}
	}
	return out
}

func crdServes(u *unstructured.Unstructured, v string) bool {
	return slices.Contains(crdVersions(u), v)
}

// crdCondition is a CRD condition's status and message; "" when absent.
func crdCondition(u *unstructured.Unstructured, typ string) (status, message string) {
	conds, _, _ := unstructured.NestedSlice(u.Object, "status", "conditions")
	for _, c := range conds {
		m, ok := c.(map[string]any)
		if !ok || m["type"] != typ {
			continue
		}
		status, _ = m["status"].(string)
		message, _ = m["message"].(string)
		return status, message
	}
	return "", "no " + typ + " condition yet"
}

func checkControllerReady(ctx context.Context, e *checkEnv) (string, error) {
	d, err := e.kube.AppsV1().Deployments(e.meshNS).Get(ctx, controllerName, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return "", fmt.Errorf("Deployment %s/%s not found (is mesh installed there? --mesh-namespace sets it)", e.meshNS, controllerName)
	}
	if err != nil {
		return "", fmt.Errorf("get Deployment %s/%s: %w", e.meshNS, controllerName, err)
	}
	want := int32(1)
	if d.Spec.Replicas != nil {
		want = *d.Spec.Replicas
	}
	// The pods, not the Deployment's status: the status lags (it still
	// said 2 ready for a moment after a scale to 0 had removed the pods).
	sel, err := metav1.LabelSelectorAsSelector(d.Spec.Selector)
	if err != nil || sel.Empty() {
		return "", fmt.Errorf("Deployment %s/%s has no usable selector: %v", e.meshNS, controllerName, err)
	}
	pods, err := e.kube.CoreV1().Pods(e.meshNS).List(ctx, metav1.ListOptions{LabelSelector: sel.String()})
	if err != nil {
		return "", fmt.Errorf("list the controller's pods in %s: %w", e.meshNS, err)
	}
	ready := 0
	for i := range pods.Items {
		if p := &pods.Items[i]; p.DeletionTimestamp == nil && podReady(p) {
			ready++
		}
	}
	msg := fmt.Sprintf("%d/%d replicas ready", ready, want)
	if ready < 1 {
		return "", fmt.Errorf("Deployment %s/%s: %s", e.meshNS, controllerName, msg)
	}
	return msg, nil
}

func checkLeader(ctx context.Context, e *checkEnv) (string, error) {
	l, err := e.kube.CoordinationV1().Leases(e.meshNS).Get(ctx, leaseName, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return "", fmt.Errorf("Lease %s/%s not found: no controller replica has ever led", e.meshNS, leaseName)
	}
	if err != nil {
		return "", fmt.Errorf("get Lease %s/%s: %w", e.meshNS, leaseName, err)
	}
	holder := ""
	if l.Spec.HolderIdentity != nil {
		holder = *l.Spec.HolderIdentity
	}
	if holder == "" {
		return "", fmt.Errorf("Lease %s/%s has no holder: the last leader released it", e.meshNS, leaseName)
	}
	if l.Spec.RenewTime == nil || l.Spec.LeaseDurationSeconds == nil {
		return "", fmt.Errorf("Lease %s/%s held by %s has no renew time or duration", e.meshNS, leaseName, holder)
	}
	age := e.now().Sub(l.Spec.RenewTime.Time)
	if lease := time.Duration(*l.Spec.LeaseDurationSeconds) * time.Second; age > lease {
		return "", fmt.Errorf("Lease %s/%s held by %s was last renewed %s ago, more than its %s duration", e.meshNS, leaseName, holder, age.Round(time.Second), lease)
	}
	p, err := e.kube.CoreV1().Pods(e.meshNS).Get(ctx, holder, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return "", fmt.Errorf("the holder %s is not a pod in %s", holder, e.meshNS)
	}
	if err != nil {
		return "", fmt.Errorf("get the holder pod %s/%s: %w", e.meshNS, holder, err)
	}
	if p.DeletionTimestamp != nil || !podReady(p) {
		return "", fmt.Errorf("the holder %s is not ready (phase %s)", holder, p.Status.Phase)
	}
	return fmt.Sprintf("held by %s, renewed %s ago", holder, age.Round(time.Second)), nil
}

func podReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

func checkWebhookConfigs(ctx context.Context, e *checkEnv) (string, error) {
	var problems []string
	for _, c := range meshWebhookConfigs {
		hooks, found, err := c.get(ctx, e.kube)
		switch {
		case err != nil:
			return "", err
		case !found:
			problems = append(problems, c.kind+" "+c.name+" not found")
		case len(hooks) == 0:
			problems = append(problems, c.name+" has no webhooks")
		}
		for _, w := range hooks {
			if len(w.caBundle) == 0 {
				problems = append(problems, fmt.Sprintf("%s webhook %s has no caBundle", c.name, w.name))
			}
		}
	}
	if len(problems) > 0 {
		return "", errors.New(strings.Join(problems, "; "))
	}
	return mutatingWebhook + ", " + validatingWebhook, nil
}

// policyWebhookName is the validating webhook's name, as the API server
// quotes it in a denial.
func policyWebhookName(ctx context.Context, e *checkEnv) string {
	v, err := e.kube.AdmissionregistrationV1().ValidatingWebhookConfigurations().Get(ctx, validatingWebhook, metav1.GetOptions{})
	if err == nil && len(v.Webhooks) > 0 {
		return v.Webhooks[0].Name
	}
	return "policy.mesh.dev"
}

// probePolicy is the policy the webhook checks dry-run: valid, or with an
// identity that is no SPIFFE ID, which the CRD's schema lets through and
// only the webhook refuses.
func probePolicy(ns string, valid bool) *unstructured.Unstructured {
	id := "spiffe://cluster.local/ns/meshctl-check/sa/probe"
	if !valid {
		id = "not a spiffe id"
	}
	p := &v1alpha1.AuthorizationPolicy{
		TypeMeta:   metav1.TypeMeta{APIVersion: v1alpha1.GroupVersion.String(), Kind: "AuthorizationPolicy"},
		ObjectMeta: metav1.ObjectMeta{GenerateName: "meshctl-check-", Namespace: ns},
		Spec: v1alpha1.AuthorizationPolicySpec{
			Action:   v1alpha1.Allow,
			Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"meshctl-check": "probe"}},
			Rules:    []v1alpha1.Rule{{From: []v1alpha1.Source{{Identities: []string{id}}}}},
		},
	}
	obj, err := runtime.DefaultUnstructuredConverter.ToUnstructured(p)
	if err != nil {
		// A typed struct always converts; keep the shape valid anyway.
		obj = map[string]any{}
	}
	return &unstructured.Unstructured{Object: obj}
}

func dryRunPolicy(ctx context.Context, e *checkEnv, valid bool) error {
	_, err := e.dyn.Resource(policyGVR).Namespace(e.meshNS).Create(ctx, probePolicy(e.meshNS, valid), metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}})
	return err
}

func checkPolicyWebhookRefuses(ctx context.Context, e *checkEnv) (string, error) {
	err := dryRunPolicy(ctx, e, false)
	if err == nil {
		return "", errors.New("the invalid policy was accepted: the webhook did not check it (is policyValidation.failurePolicy Ignore and the controller down?)")
	}
	denial := fmt.Sprintf("admission webhook %q denied the request", policyWebhookName(ctx, e))
	switch {
	case strings.Contains(err.Error(), denial):
	case strings.Contains(err.Error(), "failed calling webhook"):
		return "", fmt.Errorf("the API server could not call the webhook: %w", err)
	default:
		return "", fmt.Errorf("refused, but not by the webhook: %w", err)
	}
	return "refused by the webhook", nil
}

func checkPolicyWebhookAccepts(ctx context.Context, e *checkEnv) (string, error) {
	err := dryRunPolicy(ctx, e, true)
	switch {
	case err == nil:
		return "", nil
	case strings.Contains(err.Error(), "failed calling webhook"):
		return "", fmt.Errorf("the API server could not call the webhook: %w", err)
	}
	return "", fmt.Errorf("refused: %w", err)
}

// checkInjector dry-runs a pod in a namespace labelled for injection; the
// answer is the pod as the injector left it.
func checkInjector(ctx context.Context, e *checkEnv) (string, error) {
	nss, err := e.kube.CoreV1().Namespaces().List(ctx, metav1.ListOptions{LabelSelector: inject.InjectKey + "=" + inject.Enabled})
	if err != nil {
		return "", fmt.Errorf("list namespaces labelled %s=%s: %w", inject.InjectKey, inject.Enabled, err)
	}
	ns := ""
	for _, n := range nss.Items {
		if n.Status.Phase != corev1.NamespaceTerminating {
			ns = n.Name
			break
		}
	}
	if ns == "" {
		return "no namespace is labelled " + inject.InjectKey + "=" + inject.Enabled + ": not exercised", nil
	}
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{GenerateName: "meshctl-check-", Namespace: ns},
		Spec: corev1.PodSpec{
			Containers: []corev1.Container{{Name: "probe", Image: "meshctl-check/probe"}},
		},
	}
	got, err := e.kube.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}})
	if err != nil {
		return "", fmt.Errorf("dry-run pod in %s: %w", ns, err)
	}
	if !inventory.Meshed(got) {
		return "", fmt.Errorf("a dry-run pod in namespace %s (labelled %s=enabled) came back without the %s sidecar", ns, inject.InjectKey, inject.ProxyContainer)
	}
	return "in namespace " + ns, nil
}

func checkCAStatusFresh(ctx context.Context, e *checkEnv) (string, error) {
	d, err := e.caStatus(ctx)
	if err != nil {
		return "", err
	}
	age := e.now().Sub(d.UpdatedAt)
	if age > e.opts.staleAfter {
		return "", warn(fmt.Errorf("written by %s %s ago, more than %s: no leader is publishing it", d.Replica, age.Round(time.Second), e.opts.staleAfter))
	}
	return fmt.Sprintf("written by %s %s ago", d.Replica, age.Round(time.Second)), nil
}

// validFor checks that c is valid now and for more than margin.
func validFor(c ca.CertStatus, now time.Time, margin time.Duration) (string, error) {
	if now.Before(c.NotBefore) {
		return "", fmt.Errorf("%s (%s) is not valid before %s", c.Subject, c.Role, c.NotBefore.UTC().Format(time.RFC3339))
	}
	left := c.NotAfter.Sub(now)
	if left <= margin {
		return "", fmt.Errorf("%s (%s) expires at %s, in %s, less than %s", c.Subject, c.Role, c.NotAfter.UTC().Format(time.RFC3339), timeLeft(left), timeLeft(margin))
	}
	return fmt.Sprintf("%s left, margin %s", timeLeft(left), timeLeft(margin)), nil
}

func checkRoot(ctx context.Context, e *checkEnv) (string, error) {
	d, err := e.caStatus(ctx)
	if err != nil {
		return "", err
	}
	r, ok := d.Root(ca.RoleActive)
	if !ok {
		return "", errors.New("the CA status names no active root")
	}
	return validFor(r, e.now(), e.opts.rootMargin)
}

func checkIssuer(ctx context.Context, e *checkEnv) (string, error) {
	d, err := e.caStatus(ctx)
	if err != nil {
		return "", err
	}
	return validFor(d.Issuer, e.now(), e.opts.issuerMargin)
}

// identitiesReused is how long one reading of the proxies serves the
// data plane's checks: the checks that follow the first reuse it, a retry
// under --wait (every 2 seconds) reads them again.
const identitiesReused = time.Second

// readIdentities reads every running meshed pod's /identity (proxies.go);
// none is an empty list.
func readIdentities(ctx context.Context, e *checkEnv) ([]PodIdentity, error) {
	if e.ids != nil && e.now().Sub(e.idsAt) < identitiesReused {
		return e.ids, nil
	}
	ids, err := readAllIdentities(ctx, e)
	if err != nil {
		return nil, err
	}
	e.ids, e.idsAt = ids, e.now()
	return ids, nil
}

func readAllIdentities(ctx context.Context, e *checkEnv) ([]PodIdentity, error) {
	pods, err := meshedPods(ctx, e.kube)
	if err != nil {
		return nil, err
	}
	return readProxies(ctx, e.kube, pods, e.now()), nil
}

// proxiesFailed is a data-plane check's failure, naming the proxies found
// wanting (as what) and those that could not be read; nil if none.
func proxiesFailed(of int, what string, bad, unread []string) error {
	if len(bad)+len(unread) == 0 {
		return nil
	}
	msg := fmt.Sprintf("%d of %d proxies", len(bad)+len(unread), of)
	if len(bad) > 0 {
		msg += "; " + what + ": " + listed(bad)
	}
	if len(unread) > 0 {
		msg += "; unreadable: " + listed(unread)
	}
	return errors.New(msg)
}

// listed shows at most 5 items, and how many more.
func listed(items []string) string {
	sort.Strings(items)
	if len(items) <= 5 {
		return strings.Join(items, ", ")
	}
	return fmt.Sprintf("%s and %d more", strings.Join(items[:5], ", "), len(items)-5)
}

func checkProxiesReady(ctx context.Context, e *checkEnv) (string, error) {
	ids, err := readIdentities(ctx, e)
	if err != nil {
		return "", err
	}
	if len(ids) == 0 {
		return "no meshed pods", nil
	}
	var bad []string
	for _, id := range ids {
		switch {
		case id.Error != "":
			bad = append(bad, fmt.Sprintf("%s/%s (%s)", id.Namespace, id.Pod, id.Error))
		case !id.Healthy:
			bad = append(bad, fmt.Sprintf("%s/%s (ready %t, SVID valid %s to %s)", id.Namespace, id.Pod, id.Ready,
				id.NotBefore.UTC().Format(time.RFC3339), id.NotAfter.UTC().Format(time.RFC3339)))
		}
	}
	if len(bad) > 0 {
		return "", fmt.Errorf("%d of %d not healthy: %s", len(bad), len(ids), listed(bad))
	}
	return fmt.Sprintf("%d %s", len(ids), plural(len(ids), "pod", "pods")), nil
}

func plural(n int, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}

func checkProxiesTrustRoots(ctx context.Context, e *checkEnv) (string, error) {
	d, err := e.caStatus(ctx)
	if err != nil {
		return "", err
	}
	ids, err := readIdentities(ctx, e)
	if err != nil {
		return "", err
	}
	if len(ids) == 0 {
		return "no meshed pods", nil
	}
	var bad, unread []string
	for _, id := range ids {
		name := id.Namespace + "/" + id.Pod
		if id.Error != "" {
			unread = append(unread, name)
			continue
		}
		var missing []string
		for _, r := range d.Roots {
			if !slices.Contains(id.BundleRoots, r.Fingerprint) {
				missing = append(missing, r.Role+" "+shortFingerprint(r.Fingerprint))
			}
		}
		if len(missing) > 0 {
			bad = append(bad, fmt.Sprintf("%s (lacks %s)", name, strings.Join(missing, ", ")))
		}
	}
	if err := proxiesFailed(len(ids), "missing roots", bad, unread); err != nil {
		return "", err
	}
	return fmt.Sprintf("%d %s, %d %s", len(ids), plural(len(ids), "proxy", "proxies"), len(d.Roots), plural(len(d.Roots), "root", "roots")), nil
}

// checkPolicyEnforced reads each policy's status as the leader writes it
// (controlplane/policystatus): its current generation is enforced when
// the status describes it and every selected proxy acknowledged it. The
// status is per policy, not per proxy, so a lagging policy names its
// selected pods, among which the laggards are.
func checkPolicyEnforced(ctx context.Context, e *checkEnv) (string, error) {
	list, err := e.dyn.Resource(policyGVR).Namespace(metav1.NamespaceAll).List(ctx, metav1.ListOptions{})
	if err != nil {
		return "", fmt.Errorf("list AuthorizationPolicies: %w", err)
	}
	var lag []string
	counted := 0
	for i := range list.Items {
		var p v1alpha1.AuthorizationPolicy
		if err := runtime.DefaultUnstructuredConverter.FromUnstructured(list.Items[i].Object, &p); err != nil {
			return "", fmt.Errorf("AuthorizationPolicy %s/%s: %w", list.Items[i].GetNamespace(), list.Items[i].GetName(), err)
		}
		if l := policyLag(&p); l != "" {
			lag = append(lag, l)
		}
		counted++
	}
	if len(lag) > 0 {
		return "", fmt.Errorf("%d of %d policies lag: %s", len(lag), counted, strings.Join(lag, "; "))
	}
	if counted == 0 {
		return "no policies", nil
	}
	return fmt.Sprintf("%d %s", counted, plural(counted, "policy", "policies")), nil
}

// policyLag says how a policy's enforcement lags its generation; "" when
// it does not, or when no proxy is to enforce it (invalid, or selecting
// no meshed pod: its status says so).
func policyLag(p *v1alpha1.AuthorizationPolicy) string {
	name := p.Namespace + "/" + p.Name
	s := &p.Status
	if s.ObservedGeneration != p.Generation {
		return fmt.Sprintf("%s: the status describes generation %d, the policy is at %d (the leader has not processed it)", name, s.ObservedGeneration, p.Generation)
	}
	if c := meta(s.Conditions, v1alpha1.ConditionEnforced); c != nil && c.Reason != v1alpha1.ReasonEnforced && c.Reason != v1alpha1.ReasonPending {
		return ""
	}
	if s.EnforcedWorkloads >= s.SelectedWorkloads {
		return ""
	}
	pods := "selected: " + listed(slices.Clone(s.Workloads))
	if len(s.Workloads) == 0 {
		pods = "no pods listed"
	}
	return fmt.Sprintf("%s: %s proxies enforce generation %d (%s)", name, s.Enforced, p.Generation, pods)
}

func meta(conds []metav1.Condition, typ string) *metav1.Condition {
	for i := range conds {
		if conds[i].Type == typ {
			return &conds[i]
		}
	}
	return nil
}
