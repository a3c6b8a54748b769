package webhook_test

import (
	"crypto/tls"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	admissionregv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/mesh-dev/mesh/authz/webhook"
	"github.com/mesh-dev/mesh/e2e/cluster"
	"github.com/mesh-dev/mesh/e2e/clustertest"
	"github.com/mesh-dev/mesh/e2e/prereq"
	"github.com/mesh-dev/mesh/internal/testpki"
)

func TestMain(m *testing.M) { os.Exit(clustertest.Run(m)) }

func kubectl(t *testing.T, c *cluster.Cluster, stdin string, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command(prereq.Tool(t, "kubectl"), args...)
	cmd.Env = append(os.Environ(), "KUBECONFIG="+c.KubeconfigPath())
	cmd.Stdin = strings.NewReader(stdin)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// TestKubectlApply runs the CRD and the webhook on the real API server: a
// good policy is stored; a bad one is refused at `kubectl apply` with a
// message naming the field and the reason, and nothing is stored.
func TestKubectlApply(t *testing.T) {
	c := clustertest.Get(t)
	ctx := t.Context()
	crds := filepath.Join(prereq.RepoRoot(), "charts", "mesh", "crds")
	if out, err := kubectl(t, c, "", "apply", "-f", crds); err != nil {
		t.Fatalf("install CRD: %v\n%s", err, out)
	}
	if out, err := kubectl(t, c, "", "wait", "--for=condition=Established", "--timeout=60s", "crd/authorizationpolicies.security.mesh.dev"); err != nil {
		t.Fatalf("CRD not established: %v\n%s", err, out)
	}

	caPEM, cert := testpki.ServingCert(t, net.ParseIP("127.0.0.1"))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.Handle(webhook.Path, webhook.Handler{})
	srv := &http.Server{Handler: mux, TLSConfig: &tls.Config{Certificates: []tls.Certificate{cert}}}
	go srv.ServeTLS(ln, "", "")
	t.Cleanup(func() { srv.Close() })

	url := fmt.Sprintf("https://%s%s", ln.Addr(), webhook.Path)
	fail, none := admissionregv1.Fail, admissionregv1.SideEffectClassNone
	_, err = c.Client().AdmissionregistrationV1().ValidatingWebhookConfigurations().Create(ctx, &admissionregv1.ValidatingWebhookConfiguration{
		ObjectMeta: metav1.ObjectMeta{Name: "mesh-authz"},
		Webhooks: []admissionregv1.ValidatingWebhook{{
			Name:         "authorizationpolicies.security.mesh.dev",
			ClientConfig: admissionregv1.WebhookClientConfig{URL: &url, CABundle: caPEM},
			Rules: []admissionregv1.RuleWithOperations{{
				Operations: []admissionregv1.OperationType{admissionregv1.Create, admissionregv1.Update},
				Rule:       admissionregv1.Rule{APIGroups: []string{"security.mesh.dev"}, APIVersions: []string{"v1alpha1"}, Resources: []string{"authorizationpolicies"}},
			}},
			FailurePolicy: &fail, SideEffects: &none, AdmissionReviewVersions: []string{"v1"},
		}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Client().CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "shop"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	policy := func(name, spec string) string {
		return fmt.Sprintf("apiVersion: security.mesh.dev/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {name: %s, namespace: shop}\nspec:\n%s\n", name, spec)
	}
	// The webhook configuration reaches the API server asynchronously: a
	// bad policy is applied until it is refused, within a bound.
	badID := policy("bad-id", `  action: ALLOW
  rules: [{from: [{identities: ["spiffe://cluster.local/ns/*/sa/x"]}]}]`)
	deadline := time.Now().Add(30 * time.Second)
	for {
		out, err := kubectl(t, c, badID, "apply", "-f", "-")
		if err != nil {
			if !strings.Contains(out, `spec.rules[0].from[0].identities[0]`) || !strings.Contains(out, "wildcard is allowed only as a whole last segment") {
				t.Fatalf("refusal does not name the field and reason:\n%s", out)
			}
			break
		}
		kubectl(t, c, "", "-n", "shop", "delete", "authorizationpolicy", "bad-id")
		if time.Now().After(deadline) {
			t.Fatal("the webhook never refused a bad policy")
		}
		time.Sleep(200 * time.Millisecond)
	}

	bad := []struct{ name, spec, want string }{
		{"bad-method", `  action: ALLOW
  rules: [{to: [{methods: ["FETCH"]}]}]`, `spec.rules[0].to[0].methods[0]: Unsupported value: "FETCH"`},
		{"bad-port", `  action: ALLOW
  rules: [{to: [{ports: [70000]}]}]`, `spec.rules[0].to[0].ports[0]: Invalid value: "70000": port out of range 1-65535`},
		{"bad-path", `  action: DENY
  rules: [{to: [{paths: ["api/*"]}]}]`, `spec.rules[0].to[0].paths[0]: Invalid value: "api/*": must start with /`},
		{"unauth-http", `  action: ALLOW
  rules: [{from: [{unauthenticated: true}], to: [{methods: ["GET"]}]}]`, `HTTP fields cannot apply to a rule whose callers are only unauthenticated`},
		{"bad-namespace", `  action: ALLOW
  rules: [{from: [{namespaces: ["Not_A_Namespace"]}]}]`, `spec.rules[0].from[0].namespaces[0]: Invalid value: "Not_A_Namespace"`},
		// Refused by the CRD's own schema and CEL rules, before the webhook.
		{"bad-action", `  action: MAYBE`, `spec.action: Unsupported value: "MAYBE"`},
		{"deny-no-rules", `  action: DENY`, `a DENY policy needs at least one rule`},
		{"empty-from", `  action: ALLOW
  rules: [{from: [{}]}]`, `a from entry must set identities, namespaces, serviceAccounts or unauthenticated`},
	}
	for _, tt := range bad {
		out, err := kubectl(t, c, policy(tt.name, tt.spec), "apply", "-f", "-")
		if err == nil || !strings.Contains(out, tt.want) {
			t.Errorf("%s: kubectl apply = %v\n%s\nwant an error containing %q", tt.name, err, out, tt.want)
		}
		if out, err := kubectl(t, c, "", "-n", "shop", "get", "authorizationpolicy", tt.name); err == nil {
			t.Errorf("%s: a refused policy was stored:\n%s", tt.name, out)
		}
	}

	good := policy("backend-from-frontend", `  selector: {matchLabels: {app: backend}}
  action: ALLOW
  rules:
  - from:
    - identities: ["spiffe://cluster.local/ns/shop/sa/frontend", "spiffe://cluster.local/ns/ops/*"]
    - namespaces: ["monitoring"]
      serviceAccounts: ["prometheus"]
    to:
    - ports: [8080, "http-api"]
      methods: ["GET", "HEAD"]
      paths: ["/api/*", "/healthz"]`)
	if out, err := kubectl(t, c, good, "apply", "-f", "-"); err != nil {
		t.Fatalf("a good policy was refused: %v\n%s", err, out)
	}
	if out, err := kubectl(t, c, "", "-n", "shop", "get", "authz", "backend-from-frontend", "-o", "jsonpath={.spec.action}"); err != nil || out != "ALLOW" {
		t.Fatalf("stored policy: %q, %v", out, err)
	}
}
