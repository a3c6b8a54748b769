// Package inject_test runs mesh-controller's admission webhooks on the
// local cluster's real kube-apiserver: sidecar injection of pods and
// AuthorizationPolicy validation, the serving certificate issued by the
// mesh CA and the webhook configurations' caBundle filled by the
// controller. No node agent: the pods are checked as stored.
package inject_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	admissionregv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"

	"github.com/mesh-dev/mesh/authz/api/v1alpha1/crdtest"
	"github.com/mesh-dev/mesh/e2e/clustertest"
	"github.com/mesh-dev/mesh/e2e/meshtest"
	"github.com/mesh-dev/mesh/meshcontroller"
)

func TestMain(m *testing.M) { os.Exit(clustertest.Run(m)) }

// freePort is a loopback port nothing listens on now.
func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// webhookConfigs registers the two webhooks as the chart does, but by
// URL on loopback, and with no caBundle: until the controller fills it
// in, the API server cannot call them, and failurePolicy Fail refuses.
func webhookConfigs(t *testing.T, cs kubernetes.Interface, port int) {
	t.Helper()
	inject, validate := fmt.Sprintf("https://127.0.0.1:%d/inject", port), fmt.Sprintf("https://127.0.0.1:%d/validate-policy", port)
	fail, none := admissionregv1.Fail, admissionregv1.SideEffectClassNone
	timeout := int32(5)
	notOurs := &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{
		{Key: "kubernetes.io/metadata.name", Operator: metav1.LabelSelectorOpNotIn, Values: []string{"kube-system", "mesh-system"}},
	}}
	ctx := t.Context()
	if _, err := cs.AdmissionregistrationV1().MutatingWebhookConfigurations().Create(ctx, &admissionregv1.MutatingWebhookConfiguration{
		ObjectMeta: metav1.ObjectMeta{Name: "mesh-injector"},
		Webhooks: []admissionregv1.MutatingWebhook{{
			Name: "inject.mesh.dev", ClientConfig: admissionregv1.WebhookClientConfig{URL: &inject},
			Rules: []admissionregv1.RuleWithOperations{{Operations: []admissionregv1.OperationType{admissionregv1.Create},
				Rule: admissionregv1.Rule{APIGroups: []string{""}, APIVersions: []string{"v1"}, Resources: []string{"pods"}}}},
			NamespaceSelector: notOurs, FailurePolicy: &fail, SideEffects: &none, AdmissionReviewVersions: []string{"v1"}, TimeoutSeconds: &timeout,
		}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := cs.AdmissionregistrationV1().ValidatingWebhookConfigurations().Create(ctx, &admissionregv1.ValidatingWebhookConfiguration{
		ObjectMeta: metav1.ObjectMeta{Name: "mesh-policy-validator"},
		Webhooks: []admissionregv1.ValidatingWebhook{{
			Name: "policy.mesh.dev", ClientConfig: admissionregv1.WebhookClientConfig{URL: &validate},
			Rules: []admissionregv1.RuleWithOperations{{Operations: []admissionregv1.OperationType{admissionregv1.Create, admissionregv1.Update},
				Rule: admissionregv1.Rule{APIGroups: []string{"security.mesh.dev"}, APIVersions: []string{"v1alpha1"}, Resources: []string{"authorizationpolicies"}}}},
			FailurePolicy: &fail, SideEffects: &none, AdmissionReviewVersions: []string{"v1"}, TimeoutSeconds: &timeout,
		}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		// Never leave a Fail webhook behind for the next test package.
		bg := context.Background()
		_ = cs.AdmissionregistrationV1().MutatingWebhookConfigurations().Delete(bg, "mesh-injector", metav1.DeleteOptions{})
		_ = cs.AdmissionregistrationV1().ValidatingWebhookConfigurations().Delete(bg, "mesh-policy-validator", metav1.DeleteOptions{})
	})
}

// namespace creates ns with labels and a ServiceAccount web.
func namespace(t *testing.T, cs kubernetes.Interface, ns string, labels map[string]string) {
	t.Helper()
	ctx := t.Context()
	if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns, Labels: labels}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := meshtest.WaitFor(ctx, time.Minute, func() error {
		_, err := cs.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "web"}}, metav1.CreateOptions{})
		if err != nil && strings.Contains(err.Error(), "already exists") {
			return nil
		}
		return err
	}); err != nil {
		t.Fatal(err)
	}
}

func webPod(ns string, ann map[string]string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{GenerateName: "web-", Namespace: ns, Annotations: ann},
		Spec: corev1.PodSpec{
			ServiceAccountName: "web",
			Containers: []corev1.Container{{
				Name: "web", Image: "mesh-e2e/echo:dev",
				Ports:          []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}},
				ReadinessProbe: &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/live", Port: intstr.FromString("http")}}},
			}},
		},
	}
}

func TestWebhooks(t *testing.T) {
	c := clustertest.Get(t)
	cs := c.Client()
	ctx := t.Context()
	crdtest.Install(t, c)
	namespace(t, cs, "mesh-system", nil)
	port := freePort(t)
	webhookConfigs(t, cs, port)

	cfgPath := filepath.Join(t.TempDir(), "config.yaml")
	if err := os.WriteFile(cfgPath, []byte("proxyImage: ghcr.io/mesh-dev/mesh-proxy:e2e\nexcludeOutboundPorts: [5432]\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := meshcontroller.New()
	cmd.SetArgs([]string{"--kubeconfig", c.KubeconfigPath(), "--namespace", "mesh-system", "--replica", "e2e-inject",
		"--identity-addr", "127.0.0.1:0", "--metrics-addr", "127.0.0.1:0",
		"--webhook-addr", fmt.Sprintf("127.0.0.1:%d", port), "--webhook-extra-sans", "127.0.0.1", "--injector-config", cfgPath,
		"--leader-lease-duration", "4s", "--leader-renew-deadline", "3s", "--leader-retry-period", "500ms"})
	cctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- cmd.ExecuteContext(cctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil && !errors.Is(err, context.Canceled) {
			t.Errorf("mesh-controller: %v", err)
		}
	})

	// The controller fills both caBundles.
	if err := meshtest.WaitFor(ctx, time.Minute, func() error {
		select {
		case err := <-done:
			done <- err
			return fmt.Errorf("controller ended: %w", err)
		default:
		}
		m, err := cs.AdmissionregistrationV1().MutatingWebhookConfigurations().Get(ctx, "mesh-injector", metav1.GetOptions{})
		if err != nil {
			return err
		}
		v, err := cs.AdmissionregistrationV1().ValidatingWebhookConfigurations().Get(ctx, "mesh-policy-validator", metav1.GetOptions{})
		if err != nil {
			return err
		}
		if !strings.Contains(string(m.Webhooks[0].ClientConfig.CABundle), "BEGIN CERTIFICATE") || !strings.Contains(string(v.Webhooks[0].ClientConfig.CABundle), "BEGIN CERTIFICATE") {
			return errors.New("caBundle not set")
		}
		return nil
	}); err != nil {
		t.Fatalf("caBundles: %v", err)
	}

	namespace(t, cs, "shop", map[string]string{"mesh.dev/inject": "enabled"})
	namespace(t, cs, "plain", nil)

	tests := []struct {
		name     string
		pod      *corev1.Pod
		injected bool
		refused  string
	}{
		{name: "labelled namespace", pod: webPod("shop", nil), injected: true},
		{name: "opted out", pod: webPod("shop", map[string]string{"mesh.dev/inject": "disabled"})},
		{name: "unlabelled namespace", pod: webPod("plain", nil)},
		{name: "opted in", pod: webPod("plain", map[string]string{"mesh.dev/inject": "enabled"}), injected: true},
		{name: "bad mode", pod: webPod("shop", map[string]string{"mesh.dev/inbound-mode": "STRICT"}), refused: `inject: mesh.dev/inbound-mode: "STRICT" is not strict or permissive`},
		{name: "bad skip ports", pod: webPod("shop", map[string]string{"mesh.dev/skip-outbound-ports": "5432;80"}), refused: `inject: mesh.dev/skip-outbound-ports: "5432;80" is not a port`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var got *corev1.Pod
			var err error
			if werr := meshtest.WaitFor(ctx, 30*time.Second, func() error {
				got, err = cs.CoreV1().Pods(tc.pod.Namespace).Create(ctx, tc.pod, metav1.CreateOptions{})
				if err != nil && strings.Contains(err.Error(), "failed calling webhook") {
					return err // the API server has not seen the caBundle yet
				}
				return nil
			}); werr != nil {
				t.Fatal(werr)
			}
			if tc.refused != "" {
				if err == nil || !strings.Contains(err.Error(), tc.refused) || !strings.Contains(err.Error(), "denied the request") {
					t.Fatalf("create: %v, want a denial containing %q", err, tc.refused)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var init []string
			for _, ic := range got.Spec.InitContainers {
				init = append(init, ic.Name)
			}
			if !tc.injected {
				if len(init) != 0 || got.Annotations["mesh.dev/injected"] != "" {
					t.Fatalf("injected: init containers %v, annotations %v", init, got.Annotations)
				}
				return
			}
			if !slices.Equal(init, []string{"mesh-init", "mesh-proxy"}) || got.Annotations["mesh.dev/injected"] != meshcontroller.Version {
				t.Fatalf("init containers %v, annotations %v", init, got.Annotations)
			}
			px := got.Spec.InitContainers[1]
			if px.Image != "ghcr.io/mesh-dev/mesh-proxy:e2e" || px.RestartPolicy == nil || *px.RestartPolicy != corev1.ContainerRestartPolicyAlways {
				t.Errorf("mesh-proxy image %q restartPolicy %v", px.Image, px.RestartPolicy)
			}
			if a := got.Spec.InitContainers[0].Args; !slices.Contains(a, "--outbound-skip-ports") || a[slices.Index(a, "--outbound-skip-ports")+1] != "5432" {
				t.Errorf("mesh-init args %v: the config's excludeOutboundPorts is missing", a)
			}
			if h := got.Spec.Containers[0].ReadinessProbe.HTTPGet; h == nil || h.Path != "/app-health/web/readyz" || h.Port.IntVal != 15020 {
				t.Errorf("readiness probe not rewritten: %+v", got.Spec.Containers[0].ReadinessProbe)
			}
			probes := ""
			for _, e := range px.Env {
				if e.Name == "MESH_APP_PROBES" {
					probes = e.Value
				}
			}
			// The API server's defaults (scheme, timeout) are in the pod
			// before the webhook sees it.
			if probes != `{"/app-health/web/readyz":{"httpGet":{"path":"/live","port":8080,"scheme":"HTTP"},"timeoutSeconds":1}}` {
				t.Errorf("MESH_APP_PROBES = %q", probes)
			}
		})
	}

	// The validating webhook refuses an invalid policy with its message.
	bad := "apiVersion: security.mesh.dev/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {name: bad, namespace: shop}\nspec:\n  action: ALLOW\n  rules: [{to: [{methods: [FETCH]}]}]\n"
	out, err := crdtest.Kubectl(t, c, bad, "apply", "-f", "-")
	if err == nil || !strings.Contains(out, `spec.rules[0].to[0].methods[0]: Unsupported value: "FETCH"`) || !strings.Contains(out, "policy.mesh.dev") {
		t.Errorf("kubectl apply of an invalid policy: %v\n%s", err, out)
	}
	good := "apiVersion: security.mesh.dev/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {name: good, namespace: shop}\nspec:\n  action: ALLOW\n  rules: [{from: [{namespaces: [shop]}]}]\n"
	if out, err := crdtest.Kubectl(t, c, good, "apply", "-f", "-"); err != nil {
		t.Errorf("a valid policy was refused: %v\n%s", err, out)
	}
}
