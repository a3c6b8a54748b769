// Package meshctl_test runs meshctl's version and policy check against the
// local cluster's real kube-apiserver: a controller Deployment whose
// arguments set the trust domain and the mesh default, pods as stored
// (no node agent: their status is not needed), ServiceAccounts and
// AuthorizationPolicies, read through the commands' own clients.
package meshctl_test

import (
	"bytes"
	"encoding/json"
	"os"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/mesh-dev/mesh/authz/api/v1alpha1/crdtest"
	"github.com/mesh-dev/mesh/e2e/clustertest"
	"github.com/mesh-dev/mesh/meshctl"
)

func TestMain(m *testing.M) { os.Exit(clustertest.Run(m)) }

func create[T any](t *testing.T, f func() (T, error)) {
	t.Helper()
	if _, err := f(); err != nil {
		t.Fatal(err)
	}
}

func pod(ns, name, sa string, labels map[string]string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: labels},
		Spec: corev1.PodSpec{ServiceAccountName: sa,
			// The injected sidecar's name is what makes a pod meshed.
			InitContainers: []corev1.Container{{Name: "mesh-proxy", Image: "mesh:test"}},
			Containers:     []corev1.Container{{Name: "app", Image: "app:test", Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}}}}},
	}
}

const policies = `apiVersion: security.mesh.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: backend-from-frontend, namespace: shop}
spec:
  selector: {matchLabels: {app: backend}}
  action: ALLOW
  rules:
  - from: [{identities: ["spiffe://example.org/ns/shop/sa/frontend"]}]
    to: [{ports: [http]}]
---
apiVersion: security.mesh.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: no-admin, namespace: shop}
spec:
  action: DENY
  rules:
  - to: [{paths: ["/admin*"]}]
`

func run(t *testing.T, args ...string) (string, int) {
	t.Helper()
	cmd := meshctl.New()
	var out bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetErr(&out)
	cmd.SetArgs(args)
	err := cmd.Execute()
	if err != nil {
		out.WriteString("error: " + err.Error() + "\n")
	}
	return out.String(), meshctl.ExitCode(err)
}

func TestVersionAndPolicyCheck(t *testing.T) {
	c := clustertest.Get(t)
	crdtest.Install(t, c)
	cs := c.Client()
	ctx := t.Context()
	kc := "--kubeconfig=" + c.KubeconfigPath()

	for _, ns := range []string{"mesh-system", "shop"} {
		create(t, func() (*corev1.Namespace, error) {
			return cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{})
		})
	}
	for _, sa := range []string{"frontend", "stranger", "backend"} {
		create(t, func() (*corev1.ServiceAccount, error) {
			return cs.CoreV1().ServiceAccounts("shop").Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: sa}}, metav1.CreateOptions{})
		})
	}

	// No controller yet: version says so, and exits 1.
	if out, code := run(t, kc, "version"); code != 1 || !strings.Contains(out, "Controller: not installed") {
		t.Errorf("version without a controller: exit %d:\n%s", code, out)
	}

	ctlLabels := map[string]string{"app.kubernetes.io/name": "mesh-controller"}
	one := int32(1)
	create(t, func() (*appsv1.Deployment, error) {
		return cs.AppsV1().Deployments("mesh-system").Create(ctx, &appsv1.Deployment{
			ObjectMeta: metav1.ObjectMeta{Name: "mesh-controller", Labels: ctlLabels},
			Spec: appsv1.DeploymentSpec{Replicas: &one, Selector: &metav1.LabelSelector{MatchLabels: ctlLabels},
				Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: ctlLabels}, Spec: corev1.PodSpec{
					Containers: []corev1.Container{{Name: "controller", Image: "registry.local:5000/mesh-dev/mesh:9.8.7",
						Args: []string{"--trust-domain=example.org", "--default-policy", "deny"}}}}}},
		}, metav1.CreateOptions{})
	})
	for _, p := range []*corev1.Pod{
		pod("shop", "frontend-0", "frontend", nil),
		pod("shop", "stranger-0", "stranger", nil),
		pod("shop", "backend-0", "backend", map[string]string{"app": "backend"}),
		pod("shop", "db-0", "backend", map[string]string{"app": "db"}),
	} {
		create(t, func() (*corev1.Pod, error) { return cs.CoreV1().Pods("shop").Create(ctx, p, metav1.CreateOptions{}) })
	}
	if out, err := crdtest.Kubectl(t, c, policies, "apply", "-f", "-"); err != nil {
		t.Fatalf("kubectl apply: %v\n%s", err, out)
	}
	waitControllerPod(t, cs)

	out, code := run(t, kc, "version", "-o", "json")
	var v meshctl.VersionInfo
	if err := json.Unmarshal([]byte(out), &v); code != 0 || err != nil || v.Client != meshctl.Version || v.Controller != "9.8.7" {
		t.Errorf("version -o json: exit %d, %v:\n%s", code, err, out)
	}

	for _, tc := range []struct {
		name                   string
		args                   []string
		code                   int
		decision, policy, rule string
		fromID                 string
	}{
		{"allowed pair", []string{"--from", "pod/frontend-0", "--to", "pod/backend-0", "--port", "8080", "--path", "/orders"}, 0, "ALLOW", "shop/backend-from-frontend", "0", "spiffe://example.org/ns/shop/sa/frontend"},
		{"allowed pair, port by name", []string{"--from", "pod/frontend-0", "--to", "pod/backend-0", "--port", "http", "--method", "get", "--path", "/orders"}, 0, "ALLOW", "shop/backend-from-frontend", "0", ""},
		{"denied pair", []string{"--from", "pod/stranger-0", "--to", "pod/backend-0", "--port", "8080", "--method", "GET", "--path", "/orders"}, 1, "DENY", "shop/backend-from-frontend", "", "spiffe://example.org/ns/shop/sa/stranger"},
		{"DENY wins", []string{"--from", "pod/frontend-0", "--to", "pod/backend-0", "--port", "8080", "--method", "GET", "--path", "/admin/x"}, 1, "DENY", "shop/no-admin", "0", ""},
		// A DENY rule with paths matches a connection that is not HTTP
		// (fail closed), so a plain TCP connection is denied by it.
		{"TCP meets an HTTP DENY", []string{"--from", "pod/frontend-0", "--to", "pod/backend-0", "--port", "8080"}, 1, "DENY", "shop/no-admin", "0", ""},
		{"the controller's --default-policy deny", []string{"--from", "pod/frontend-0", "--to", "pod/db-0", "--port", "8080", "--path", "/"}, 1, "DENY", "default:deny", "", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, code := run(t, append([]string{kc, "-n", "shop", "policy", "check", "-o", "json"}, tc.args...)...)
			var v meshctl.Verdict
			// A denial prints the verdict, then the error line.
			jsonPart, _, _ := strings.Cut(out, "error: ")
			if err := json.Unmarshal([]byte(jsonPart), &v); err != nil {
				t.Fatalf("exit %d, %v:\n%s", code, err, out)
			}
			if code != tc.code || v.Decision != tc.decision || v.Policy != tc.policy || v.Rule != tc.rule || (tc.fromID != "" && v.FromIdentity != tc.fromID) {
				t.Errorf("exit %d, %s by %s rule %q from %s; want exit %d, %s by %s rule %q from %s\n%s", code, v.Decision, v.Policy, v.Rule, v.FromIdentity,
					tc.code, tc.decision, tc.policy, tc.rule, tc.fromID, out)
			}
		})
	}
	if out, code := run(t, kc, "-n", "shop", "policy", "check", "--from", "pod/nope", "--to", "pod/backend-0", "--port", "8080"); code != 1 || !strings.Contains(out, "pod nope not found in namespace shop") {
		t.Errorf("missing caller: exit %d:\n%s", code, out)
	}
}

// waitControllerPod waits for the Deployment's pod to be created (it is
// never scheduled: there is no node).
func waitControllerPod(t *testing.T, cs kubernetes.Interface) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		l, err := cs.CoreV1().Pods("mesh-system").List(t.Context(), metav1.ListOptions{LabelSelector: "app.kubernetes.io/name=mesh-controller"})
		if err == nil && len(l.Items) > 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the controller Deployment made no pod: %v", err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}
