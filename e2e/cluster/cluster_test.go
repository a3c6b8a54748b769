package cluster_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	admissionv1 "k8s.io/api/admission/v1"
	admissionregv1 "k8s.io/api/admissionregistration/v1"
	authnv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/mesh-dev/mesh/e2e/cluster"
	"github.com/mesh-dev/mesh/e2e/clustertest"
	"github.com/mesh-dev/mesh/e2e/prereq"
	"github.com/mesh-dev/mesh/internal/testpki"
)

func TestMain(m *testing.M) { os.Exit(clustertest.Run(m)) }

func kubectl(t *testing.T, c *cluster.Cluster, args ...string) string {
	t.Helper()
	cmd := exec.Command(prereq.Tool(t, "kubectl"), args...)
	cmd.Env = append(os.Environ(), "KUBECONFIG="+c.KubeconfigPath())
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("kubectl %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// TestKubectlHelmAndTokenReview is the manual acceptance, as a test:
// the built kubectl and helm work against the cluster with its kubeconfig,
// and a token from `kubectl create token` passes a TokenReview.
func TestKubectlHelmAndTokenReview(t *testing.T) {
	c := clustertest.Get(t)
	ctx := t.Context()

	if got := kubectl(t, c, "get", "--raw", "/readyz"); got != "ok" {
		t.Fatalf("/readyz = %q, want ok", got)
	}
	if got := kubectl(t, c, "version", "-o", "json"); !strings.Contains(got, `"gitVersion": "v1.37.2"`) {
		t.Fatalf("kubectl version does not report v1.37.2:\n%s", got)
	}
	kubectl(t, c, "create", "namespace", "x")
	kubectl(t, c, "-n", "x", "create", "serviceaccount", "a")
	token := strings.TrimSpace(kubectl(t, c, "-n", "x", "create", "token", "a", "--audience", "test"))

	review := review(t, c.Client(), token, "test")
	if !review.Status.Authenticated || review.Status.User.Username != "system:serviceaccount:x:a" {
		t.Fatalf("TokenReview = %+v, want authenticated system:serviceaccount:x:a", review.Status)
	}
	if got := review.Status.Audiences; len(got) != 1 || got[0] != "test" {
		t.Fatalf("TokenReview audiences = %v, want [test]", got)
	}

	helm := exec.CommandContext(ctx, prereq.Tool(t, "helm"), "version", "--short")
	helm.Env = append(os.Environ(), "KUBECONFIG="+c.KubeconfigPath(), "HELM_CACHE_HOME="+t.TempDir(), "HELM_CONFIG_HOME="+t.TempDir())
	out, err := helm.CombinedOutput()
	if err != nil || !strings.HasPrefix(string(out), "v3.22.0") {
		t.Fatalf("helm version = %q, %v; want v3.22.0", out, err)
	}
}

func review(t *testing.T, cs kubernetes.Interface, token string, audiences ...string) *authnv1.TokenReview {
	t.Helper()
	r, err := cs.AuthenticationV1().TokenReviews().Create(t.Context(), &authnv1.TokenReview{
		Spec: authnv1.TokenReviewSpec{Token: token, Audiences: audiences},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("TokenReview: %v", err)
	}
	return r
}

func createPod(t *testing.T, cs kubernetes.Interface, ns, name, sa string) *corev1.Pod {
	t.Helper()
	pod, err := cs.CoreV1().Pods(ns).Create(t.Context(), &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, GenerateName: map[bool]string{true: "p-"}[name == ""]},
		Spec: corev1.PodSpec{
			ServiceAccountName: sa,
			Containers:         []corev1.Container{{Name: "app", Image: "mesh-e2e/echo"}},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create pod: %v", err)
	}
	return pod
}

func createNamespace(t *testing.T, cs kubernetes.Interface, name string, labels map[string]string) {
	t.Helper()
	ctx := t.Context()
	if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels}}, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create namespace %s: %v", name, err)
	}
	// Pods are refused until the controller-manager made the default
	// ServiceAccount.
	waitFor(t, 30*time.Second, "default ServiceAccount in "+name, func() error {
		_, err := cs.CoreV1().ServiceAccounts(name).Get(ctx, "default", metav1.GetOptions{})
		return err
	})
}

func waitFor(t *testing.T, bound time.Duration, what string, f func() error) {
	t.Helper()
	deadline := time.Now().Add(bound)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s: %v", what, bound, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestTokenReviewPodBound shows what the identity service relies on: a
// pod-bound token authenticates with the pod named in it, a token for
// another audience does not, and a bound token dies with its pod.
func TestTokenReviewPodBound(t *testing.T) {
	c := clustertest.Get(t)
	cs, ctx := c.Client(), t.Context()
	createNamespace(t, cs, "bound", nil)
	if _, err := cs.CoreV1().ServiceAccounts("bound").Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "web"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	pod := createPod(t, cs, "bound", "web-0", "web")

	token := func(aud string) string {
		tr, err := cs.CoreV1().ServiceAccounts("bound").CreateToken(ctx, "web", &authnv1.TokenRequest{Spec: authnv1.TokenRequestSpec{
			Audiences:      []string{aud},
			BoundObjectRef: &authnv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: pod.Name, UID: pod.UID},
		}}, metav1.CreateOptions{})
		if err != nil {
			t.Fatalf("TokenRequest: %v", err)
		}
		return tr.Status.Token
	}

	good := token("mesh")
	r := review(t, cs, good, "mesh")
	if !r.Status.Authenticated {
		t.Fatalf("pod-bound token for audience mesh not authenticated: %+v", r.Status)
	}
	if r.Status.User.Username != "system:serviceaccount:bound:web" {
		t.Errorf("username = %q", r.Status.User.Username)
	}
	if got := r.Status.User.Extra["authentication.kubernetes.io/pod-name"]; len(got) != 1 || got[0] != "web-0" {
		t.Errorf("pod-name extra = %v, want [web-0]", got)
	}
	if got := r.Status.User.Extra["authentication.kubernetes.io/pod-uid"]; len(got) != 1 || got[0] != string(pod.UID) {
		t.Errorf("pod-uid extra = %v, want [%s]", got, pod.UID)
	}

	wrong := token("something-else")
	if r := review(t, cs, wrong, "mesh"); r.Status.Authenticated {
		t.Fatalf("token for another audience authenticated for mesh: %+v", r.Status)
	}

	// A bound token stops working once its pod is gone.
	if err := cs.CoreV1().Pods("bound").Delete(ctx, pod.Name, *metav1.NewDeleteOptions(0)); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 30*time.Second, "bound token rejected after its pod was deleted", func() error {
		if r := review(t, cs, good, "mesh"); r.Status.Authenticated {
			return fmt.Errorf("still authenticated")
		}
		return nil
	})
}

// TestMutatingWebhook registers a webhook served by this test over TLS, by
// URL, and shows that creating a Pod calls it and stores the mutation.
func TestMutatingWebhook(t *testing.T) {
	c := clustertest.Get(t)
	cs, ctx := c.Client(), t.Context()

	caPEM, serverCert := testpki.ServingCert(t, net.ParseIP("127.0.0.1"))
	var calls atomic.Int64
	mux := http.NewServeMux()
	mux.HandleFunc("/mutate", func(w http.ResponseWriter, r *http.Request) {
		calls.Add(1)
		var review admissionv1.AdmissionReview
		if err := json.NewDecoder(io.LimitReader(r.Body, 1<<20)).Decode(&review); err != nil || review.Request == nil {
			http.Error(w, "bad review", http.StatusBadRequest)
			return
		}
		patch := `[{"op":"add","path":"/metadata/annotations","value":{"e2e.mesh.dev/mutated-by":"test-webhook"}}]`
		pt := admissionv1.PatchTypeJSONPatch
		review.Response = &admissionv1.AdmissionResponse{UID: review.Request.UID, Allowed: true, Patch: []byte(patch), PatchType: &pt}
		review.Request = nil
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(&review)
	})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: mux, TLSConfig: &tls.Config{Certificates: []tls.Certificate{serverCert}}}
	go srv.ServeTLS(ln, "", "")
	t.Cleanup(func() { srv.Close() })

	createNamespace(t, cs, "hooked", map[string]string{"e2e.mesh.dev/webhook": "on"})
	url := fmt.Sprintf("https://%s/mutate", ln.Addr())
	fail := admissionregv1.Fail
	none := admissionregv1.SideEffectClassNone
	_, err = cs.AdmissionregistrationV1().MutatingWebhookConfigurations().Create(ctx, &admissionregv1.MutatingWebhookConfiguration{
		ObjectMeta: metav1.ObjectMeta{Name: "e2e-mutate"},
		Webhooks: []admissionregv1.MutatingWebhook{{
			Name:                    "mutate.e2e.mesh.dev",
			ClientConfig:            admissionregv1.WebhookClientConfig{URL: &url, CABundle: caPEM},
			Rules:                   []admissionregv1.RuleWithOperations{{Operations: []admissionregv1.OperationType{admissionregv1.Create}, Rule: admissionregv1.Rule{APIGroups: []string{""}, APIVersions: []string{"v1"}, Resources: []string{"pods"}}}},
			NamespaceSelector:       &metav1.LabelSelector{MatchLabels: map[string]string{"e2e.mesh.dev/webhook": "on"}},
			FailurePolicy:           &fail,
			SideEffects:             &none,
			AdmissionReviewVersions: []string{"v1"},
		}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create webhook configuration: %v", err)
	}
	t.Cleanup(func() {
		_ = cs.AdmissionregistrationV1().MutatingWebhookConfigurations().Delete(context.Background(), "e2e-mutate", metav1.DeleteOptions{})
	})

	// The API server picks up new webhook configurations asynchronously:
	// create pods until one comes back mutated, within a bound.
	var pod *corev1.Pod
	waitFor(t, 30*time.Second, "pod mutated by the webhook", func() error {
		pod = createPod(t, cs, "hooked", "", "default")
		if pod.Annotations["e2e.mesh.dev/mutated-by"] != "test-webhook" {
			return fmt.Errorf("pod %s not mutated", pod.Name)
		}
		return nil
	})
	stored, err := cs.CoreV1().Pods("hooked").Get(ctx, pod.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if stored.Annotations["e2e.mesh.dev/mutated-by"] != "test-webhook" {
		t.Fatalf("stored pod lacks the mutation: %v", stored.Annotations)
	}
	if calls.Load() == 0 {
		t.Fatal("webhook was never called")
	}
}

func pidsIn(t *testing.T, dir string) map[string]int {
	t.Helper()
	files, _ := filepath.Glob(filepath.Join(dir, "pids", "*.pid"))
	out := map[string]int{}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		pid, _ := strconv.Atoi(strings.Fields(string(b))[0])
		out[strings.TrimSuffix(filepath.Base(f), ".pid")] = pid
	}
	return out
}

// running reports whether pid is a live (not zombie) process.
func running(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	i := bytes.LastIndexByte(b, ')')
	return i < 0 || i+2 >= len(b) || b[i+2] != 'Z'
}

func waitGone(t *testing.T, pids map[string]int) {
	t.Helper()
	waitFor(t, 20*time.Second, "processes gone", func() error {
		for name, pid := range pids {
			if running(pid) {
				return fmt.Errorf("%s (pid %d) still running", name, pid)
			}
		}
		return nil
	})
}

// TestUpDownLeavesNothing drives the mesh-cluster CLI the way `make
// cluster-up` and `make cluster-down` do, then a crash: the supervisor is
// killed with SIGKILL and `down` cleans what it left.
func TestUpDownLeavesNothing(t *testing.T) {
	if testing.Short() {
		t.Skip("starts clusters")
	}
	prereq.Command(t, "etcd")
	prereq.Tool(t, "kube-apiserver")
	bin := prereq.Bin(t, "mesh-cluster")
	dir := t.TempDir()

	run := func(args ...string) string {
		t.Helper()
		out, err := exec.Command(bin, append(args, "--dir", dir)...).CombinedOutput()
		if err != nil {
			t.Fatalf("mesh-cluster %v: %v\n%s", args, err, out)
		}
		return string(out)
	}
	out := run("up", "--background")
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if want := "export KUBECONFIG=" + filepath.Join(dir, "kubeconfig"); lines[len(lines)-1] != want {
		t.Fatalf("last line of up = %q, want %q", lines[len(lines)-1], want)
	}
	pids := pidsIn(t, dir)
	for _, name := range []string{"supervisor", "etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler"} {
		if pid, ok := pids[name]; !ok || !running(pid) {
			t.Fatalf("%s not running after up (pids %v)", name, pids)
		}
	}
	t.Cleanup(func() { _ = cluster.Down(dir) })
	run("down")
	waitGone(t, pids)

	// A crash: the supervisor dies without stopping anything.
	run("up", "--background")
	pids = pidsIn(t, dir)
	if err := syscall.Kill(pids["supervisor"], syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	run("down")
	waitGone(t, pids)
	if left := pidsIn(t, dir); len(left) != 0 {
		t.Fatalf("pid files left after down: %v", left)
	}
	if _, err := os.Stat(filepath.Join(dir, "etcd")); !os.IsNotExist(err) {
		t.Fatalf("etcd data left after down: %v", err)
	}
}
