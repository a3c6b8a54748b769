package meshctl

import (
	"context"
	"errors"
	"fmt"
	"strings"

	authorizationv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/mesh-dev/mesh/inject"
)

// chartResource is a kind of object charts/mesh creates, which the user
// installing it must be allowed to create.
type chartResource struct {
	group, resource, kind string
	// namespaced: created in the mesh namespace.
	namespaced bool
}

// chartResources are what `helm install` of charts/mesh creates (with
// --create-namespace).
var chartResources = []chartResource{
	{"apiextensions.k8s.io", "customresourcedefinitions", "CustomResourceDefinitions", false},
	{"", "namespaces", "Namespaces", false},
	{"rbac.authorization.k8s.io", "clusterroles", "ClusterRoles", false},
	{"rbac.authorization.k8s.io", "clusterrolebindings", "ClusterRoleBindings", false},
	{"admissionregistration.k8s.io", "mutatingwebhookconfigurations", "MutatingWebhookConfigurations", false},
	{"admissionregistration.k8s.io", "validatingwebhookconfigurations", "ValidatingWebhookConfigurations", false},
	{"rbac.authorization.k8s.io", "roles", "Roles", true},
	{"rbac.authorization.k8s.io", "rolebindings", "RoleBindings", true},
	{"", "serviceaccounts", "ServiceAccounts", true},
	{"", "configmaps", "ConfigMaps", true},
	{"", "services", "Services", true},
	{"apps", "deployments", "Deployments", true},
	{"policy", "poddisruptionbudgets", "PodDisruptionBudgets", true},
}

// preCategories are `meshctl check --pre`'s, before install.
func preCategories() []category {
	var rbac []checker
	for _, r := range chartResources {
		desc, canI := "can create "+r.kind, "kubectl auth can-i create "+r.resource
		if r.group != "" {
			canI += "." + r.group
		}
		if r.namespaced {
			desc += " in --mesh-namespace"
			canI += " -n MESH_NAMESPACE"
		}
		rbac = append(rbac, checker{
			description: desc,
			hint:        "installing mesh needs cluster-admin or a role granting create on what the chart creates (docs/meshctl.md lists it): " + canI,
			run:         canCreate(r),
		})
	}
	return []category{
		apiCategory(),
		{name: "pre-kubernetes-capability", checkers: []checker{
			{
				description: "native sidecars work (a dry-run pod keeps an init container's restartPolicy: Always)",
				hint:        "enable the SidecarContainers feature gate (on by default from Kubernetes 1.29) on the API server and the kubelets",
				run:         checkNativeSidecars,
			},
		}},
		{name: "pre-kubernetes-setup", checkers: rbac},
		{name: "pre-mesh-conflicts", checkers: []checker{
			{
				description: "no AuthorizationPolicy CRD of another version is installed",
				hint:        "a CRD " + crdName + " that does not serve v1alpha1 is another mesh's or an incompatible release's: remove it (kubectl delete crd " + crdName + ", which deletes its policies) or install the matching release",
				run:         checkNoConflictingCRD,
			},
			{
				description: "no mesh webhook configurations exist yet",
				hint:        "mesh (or a previous install's leftovers) is already here: helm upgrade it, or helm uninstall it and delete the webhook configurations " + mutatingWebhook + " and " + validatingWebhook,
				warning:     true,
				run:         checkNoWebhooks,
			},
		}},
	}
}

func canCreate(r chartResource) func(context.Context, *checkEnv) (string, error) {
	return func(ctx context.Context, e *checkEnv) (string, error) {
		attrs := &authorizationv1.ResourceAttributes{Verb: "create", Group: r.group, Resource: r.resource}
		where := "cluster-wide"
		if r.namespaced {
			attrs.Namespace = e.meshNS
			where = "in namespace " + e.meshNS
		}
		rev, err := e.kube.AuthorizationV1().SelfSubjectAccessReviews().Create(ctx,
			&authorizationv1.SelfSubjectAccessReview{Spec: authorizationv1.SelfSubjectAccessReviewSpec{ResourceAttributes: attrs}}, metav1.CreateOptions{})
		if err != nil {
			return "", fmt.Errorf("SelfSubjectAccessReview: %w", err)
		}
		if !rev.Status.Allowed {
			msg := fmt.Sprintf("not allowed to create %s %s", r.resource, where)
			if rev.Status.Reason != "" {
				msg += ": " + rev.Status.Reason
			}
			return "", errors.New(msg)
		}
		return "", nil
	}
}

// sidecarProbeNamespace is where --pre dry-runs its pod: one that every
// cluster has, since the mesh namespace may not exist yet.
const sidecarProbeNamespace = metav1.NamespaceDefault

// checkNativeSidecars dry-runs a pod with an init container whose
// restartPolicy is Always: an API server without native sidecars drops
// the field (or refuses it), and the proxy would then block the pod's
// start forever.
func checkNativeSidecars(ctx context.Context, e *checkEnv) (string, error) {
	always := corev1.ContainerRestartPolicyAlways
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{GenerateName: "meshctl-check-", Namespace: sidecarProbeNamespace,
			// No injector may change the probe.
			Labels: map[string]string{inject.InjectKey: inject.Disabled}},
		Spec: corev1.PodSpec{
			InitContainers: []corev1.Container{{Name: "sidecar", Image: "meshctl-check/probe", RestartPolicy: &always}},
			Containers:     []corev1.Container{{Name: "app", Image: "meshctl-check/probe"}},
		},
	}
	got, err := e.kube.CoreV1().Pods(sidecarProbeNamespace).Create(ctx, pod, metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}})
	if err != nil {
		return "", fmt.Errorf("dry-run pod in namespace %s: %w", sidecarProbeNamespace, err)
	}
	for _, c := range got.Spec.InitContainers {
		if c.Name == "sidecar" && c.RestartPolicy != nil && *c.RestartPolicy == always {
			return "", nil
		}
	}
	return "", errors.New("the API server dropped the init container's restartPolicy: Always")
}

func checkNoConflictingCRD(ctx context.Context, e *checkEnv) (string, error) {
	u, err := e.dyn.Resource(crdGVR).Get(ctx, crdName, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("get CRD %s: %w", crdName, err)
	}
	if !crdServes(u, policyGVR.Version) {
		return "", fmt.Errorf("CRD %s exists and serves %s, not %s", crdName, strings.Join(crdVersions(u), ", "), policyGVR.Version)
	}
	// helm install leaves an existing CRD as it is (crds/ is installed
	// only when absent): this one is compatible, but may be older.
	return "", warn(fmt.Errorf("CRD %s already exists (it serves %s; helm install keeps it as it is)", crdName, policyGVR.Version))
}

func checkNoWebhooks(ctx context.Context, e *checkEnv) (string, error) {
	var found []string
	for _, c := range meshWebhookConfigs {
		_, exists, err := c.get(ctx, e.kube)
		if err != nil {
			return "", err
		}
		if exists {
			found = append(found, c.kind+" "+c.name)
		}
	}
	if len(found) > 0 {
		return "", fmt.Errorf("%s already %s", strings.Join(found, " and "), plural(len(found), "exists", "exist"))
	}
	return "", nil
}
