// Package install_test installs mesh the way users do, with the helm
// binary and the chart in charts/mesh, on the local cluster: the real
// controller-manager makes the controller's ReplicaSet, the scheduler puts
// its pods on the node, the node agent runs them from the images' binaries,
// and the controller's webhook injects the proxies of the application the
// test deploys. Services and DNS come from kube-proxy and CoreDNS.
package install_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math/big"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/mesh-dev/mesh/e2e/cluster"
	"github.com/mesh-dev/mesh/e2e/clustertest"
	"github.com/mesh-dev/mesh/e2e/helminstall"
	"github.com/mesh-dev/mesh/e2e/load"
	"github.com/mesh-dev/mesh/e2e/meshtest"
	"github.com/mesh-dev/mesh/e2e/node"
	"github.com/mesh-dev/mesh/e2e/prereq"
	"github.com/mesh-dev/mesh/internal/tcpdump"
	"github.com/mesh-dev/mesh/meshctl"
)

func TestMain(m *testing.M) { os.Exit(clustertest.Run(m)) }

const (
	system   = helminstall.Namespace
	ns       = "shop"
	serverID = "spiffe://cluster.local/ns/shop/sa/server"
	clientID = "spiffe://cluster.local/ns/shop/sa/client"
	// The server's Service by its DNS name: CoreDNS answers it, and the
	// client's proxy balances it over the endpoints.
	serverURL = "http://server.shop.svc.cluster.local:8080"
)

type env struct {
	*helminstall.Mesh
	c      *cluster.Cluster
	cs     kubernetes.Interface
	client string // the client pod's name
}

// TestInstall: helm install, injection, calls by Service name over mTLS,
// the outsider refused, policies and their status, a Job with a sidecar,
// the leader killed under traffic, helm upgrade and helm uninstall.
func TestInstall(t *testing.T) {
	prereq.Command(t, "tcpdump")
	c := clustertest.Get(t)
	m := helminstall.Start(t, c)
	e := &env{Mesh: m, c: c, cs: m.Kube}

	t.Run("install", e.testInstall)
	if t.Failed() {
		return
	}
	t.Run("injected-app", e.testApp)
	if t.Failed() {
		return
	}
	t.Run("outsider-refused", e.testOutsider)
	t.Run("serial-on-the-wire", e.testSerialOnTheWire)
	t.Run("policy-and-status", e.testPolicy)
	t.Run("job-with-sidecar-completes", e.testJob)
	t.Run("leader-killed-under-traffic", e.testKillLeader)
	t.Run("upgrade-rolls", e.testUpgrade)
	t.Run("uninstall-leaves-no-webhook", e.testUninstall)
}

func (e *env) testInstall(t *testing.T) {
	ctx := t.Context()
	if out := e.MustRun(t, "helm", "lint", e.Chart); !strings.Contains(out, "0 chart(s) failed") || strings.Contains(out, "[WARNING]") {
		t.Fatalf("helm lint:\n%s", out)
	}
	// A bad value fails the install with the schema's message, and
	// creates nothing.
	for _, bad := range []struct{ set, want string }{
		{"identity.svidTTL=banana", "at '/identity/svidTTL': 'banana' does not match pattern"},
		{"trustDomain=123", "at '/trustDomain': got number, want string"},
	} {
		out, err := e.Run(ctx, "", "helm", "install", "mesh", e.Chart, "-n", system, "--create-namespace", "--set", bad.set)
		if err == nil || !strings.Contains(out, "values don't meet the specifications of the schema") || !strings.Contains(out, bad.want) {
			t.Fatalf("helm install --set %s: %v\n%s", bad.set, err, out)
		}
	}
	if _, err := e.cs.AppsV1().Deployments(system).Get(ctx, "mesh-controller", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Fatalf("a refused install left the controller Deployment: %v", err)
	}
	e.Install(t)
	// helm --wait reads the ReplicaSet's ready count; the Deployment's
	// copy of it follows on the deployment controller's next sync.
	if err := meshtest.WaitFor(ctx, time.Minute, func() error {
		dep, err := e.cs.AppsV1().Deployments(system).Get(ctx, "mesh-controller", metav1.GetOptions{})
		if err != nil {
			return err
		}
		if dep.Status.ReadyReplicas != 2 || dep.Status.UpdatedReplicas != 2 {
			return fmt.Errorf("controller Deployment: %d ready, %d updated; want 2 and 2", dep.Status.ReadyReplicas, dep.Status.UpdatedReplicas)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	// Through the real controllers: a ReplicaSet made by the
	// controller-manager, pods bound by the scheduler to the node agent's
	// node, run from the image's binary.
	pods := e.controllers(t)
	for _, p := range pods {
		if p.Spec.NodeName != "node-1" || len(p.OwnerReferences) == 0 || p.OwnerReferences[0].Kind != "ReplicaSet" {
			t.Errorf("controller pod %s: node %q, owners %v", p.Name, p.Spec.NodeName, p.OwnerReferences)
		}
		if img := p.Spec.Containers[0].Image; !strings.HasPrefix(img, "ghcr.io/mesh-dev/mesh-controller:") {
			t.Errorf("controller pod %s runs image %q", p.Name, img)
		}
	}
	// The controller filled in the webhooks' caBundle, or no pod would be
	// injected (failurePolicy Fail would refuse them).
	if err := meshtest.WaitFor(ctx, time.Minute, func() error {
		m, err := e.cs.AdmissionregistrationV1().MutatingWebhookConfigurations().Get(ctx, "mesh-injector", metav1.GetOptions{})
		if err != nil {
			return err
		}
		for _, w := range m.Webhooks {
			if len(w.ClientConfig.CABundle) == 0 {
				return fmt.Errorf("webhook %s has no caBundle yet", w.Name)
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

// controllers are the controller's running pods.
func (e *env) controllers(t *testing.T) []corev1.Pod {
	t.Helper()
	pods, err := e.Controllers(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	return pods
}

func (e *env) testApp(t *testing.T) {
	ctx := t.Context()
	e.Namespace(t, ns, true)
	// The Job's ServiceAccount (testJob).
	if _, err := e.cs.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "migrate"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	e.DeployEcho(t, ns, helminstall.EchoApp{Name: "server", Replicas: 2, Service: true}, helminstall.EchoApp{Name: "client", Replicas: 1})
	pods, err := e.cs.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range pods.Items {
		var names []string
		sidecar := false
		for _, c := range p.Spec.InitContainers {
			names = append(names, c.Name)
			if c.Name == "mesh-proxy" && c.RestartPolicy != nil && *c.RestartPolicy == corev1.ContainerRestartPolicyAlways {
				sidecar = true
			}
		}
		if !slices.Contains(names, "mesh-init") || !sidecar {
			t.Errorf("pod %s was not injected as a native sidecar: init containers %v", p.Name, names)
		}
		if strings.HasPrefix(p.Name, "client-") {
			e.client = p.Name
		}
	}
	if e.client == "" {
		t.Fatal("no client pod")
	}

	// Each pod's proxy serves an SVID for its ServiceAccount: meshctl reads
	// it through the API server's pods/proxy.
	for dep, want := range map[string]string{"server": serverID, "client": clientID} {
		out, err := e.meshctl(t, "identity", "show", "-n", ns, "deploy/"+dep, "-o", "json")
		if err != nil {
			t.Fatalf("meshctl identity show deploy/%s: %v\n%s", dep, err, out)
		}
		var ids []meshctl.PodIdentity
		if dep == "server" {
			var list struct{ Items []meshctl.PodIdentity }
			err = json.Unmarshal([]byte(out), &list)
			ids = list.Items
		} else {
			var one meshctl.PodIdentity
			err = json.Unmarshal([]byte(out), &one)
			ids = []meshctl.PodIdentity{one}
		}
		if err != nil {
			t.Fatalf("meshctl identity show deploy/%s: %v\n%s", dep, err, out)
		}
		want2 := map[string]int{"server": 2, "client": 1}[dep]
		if len(ids) != want2 {
			t.Fatalf("deploy/%s: %d identities, want %d: %s", dep, len(ids), want2, out)
		}
		for _, id := range ids {
			if id.SPIFFEID != want || !id.Healthy || id.SerialNumber == "" || len(id.BundleRoots) == 0 || id.KeyType == "" {
				t.Errorf("pod %s serves %+v, want %s and healthy", id.Pod, id, want)
			}
		}
	}

	// Calls by Service name, the full one and the short one through the
	// search path, over mTLS: the server saw the client's identity, and a
	// capture of the bridge has the request's marker nowhere in clear.
	clientIP := e.podIP(t, e.client)
	capture := tcpdump.Start(t, "", node.Bridge, "host", clientIP, "and", "tcp")
	marker := fmt.Sprintf("marker-%d", time.Now().UnixNano())
	for _, url := range []string{serverURL + "/" + marker, "http://server:8080/" + marker + "-short"} {
		out, err := e.inPod(ctx, e.client, "get", url)
		if err != nil || !strings.Contains(out, "peer="+clientID) || !strings.Contains(out, "hello from server-") {
			t.Errorf("GET %s from the client: %v: %s", url, err, out)
		}
	}
	if err := capture.Stop(); err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(capture.Path)
	if err != nil {
		t.Fatalf("capture: %v (%s)", err, capture.Stderr())
	}
	if len(raw) < 1000 {
		t.Fatalf("the capture holds %d bytes: the traffic did not cross the bridge? %s", len(raw), capture.Stderr())
	}
	if bytes.Contains(raw, []byte(marker)) {
		t.Errorf("the marker %q crossed the bridge in clear", marker)
	}
}

func (e *env) testOutsider(t *testing.T) {
	ctx := t.Context()
	e.Namespace(t, "plain", false)
	if _, err := meshtest.CreateRunning(ctx, e.cs, meshtest.PlainPod("plain", "outsider")); err != nil {
		t.Fatal(err)
	}
	got, err := e.cs.CoreV1().Pods("plain").Get(ctx, "outsider", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(got.Spec.InitContainers) != 0 {
		t.Fatalf("a pod in an unlabelled namespace was injected: %v", got.Spec.InitContainers)
	}
	// DNS and the Service work for it (kube-proxy), but the server's proxy
	// takes only mTLS.
	out, err := meshtest.Echo(ctx, "plain", "outsider", "get", serverURL+"/from-outside")
	if err == nil || strings.Contains(out, "hello from") {
		t.Fatalf("the outsider reached the server: %v: %s", err, out)
	}
	t.Logf("outsider refused: %s", strings.TrimSpace(out))
	// meshctl says so too, with exit status 1.
	out, err = e.meshctl(t, "identity", "show", "-n", "plain", "pod/outsider")
	if meshctl.ExitCode(err) != 1 || !strings.Contains(out, "not meshed") {
		t.Errorf("meshctl identity show of an unmeshed pod: %v (exit %d): %s", err, meshctl.ExitCode(err), out)
	}
}

// testSerialOnTheWire: the serial meshctl identity show reports is the
// serial of the certificate the pod's proxy presents on the wire, read
// with openssl s_client from another pod's network namespace (the
// handshake then fails: the outsider has no client certificate).
func (e *env) testSerialOnTheWire(t *testing.T) {
	prereq.Command(t, "openssl")
	ctx := t.Context()
	pods, err := e.cs.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: "app=server"})
	if err != nil || len(pods.Items) == 0 {
		t.Fatalf("server pods: %v", err)
	}
	p := pods.Items[0]
	out, err := e.meshctl(t, "identity", "show", "-n", ns, "pod/"+p.Name, "-o", "json")
	if err != nil {
		t.Fatalf("meshctl identity show: %v\n%s", err, out)
	}
	var id meshctl.PodIdentity
	if err := json.Unmarshal([]byte(out), &id); err != nil {
		t.Fatal(err)
	}
	got, err := helminstall.WireSerial(ctx, node.NetnsName("plain", "outsider"), p.Status.PodIP+":8080")
	if err != nil {
		t.Fatal(err)
	}
	if want, ok := new(big.Int).SetString(id.SerialNumber, 16); !ok || got.Cmp(want) != 0 {
		t.Fatalf("on the wire %x, meshctl %q", got, id.SerialNumber)
	}
	t.Logf("pod %s serves serial %s on the wire, as meshctl says", p.Name, id.SerialNumber)
}

const policy = `apiVersion: security.mesh.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: server, namespace: shop}
spec:
  selector: {matchLabels: {app: server}}
  action: ALLOW
  rules:
  - from: [{identities: ["spiffe://cluster.local/ns/shop/sa/client", "spiffe://cluster.local/ns/shop/sa/migrate"]}]
    to: [{ports: [8080], methods: ["GET"], paths: ["/", "/api/*", "/status/*"]}]
`

// testPolicy: a policy applied with kubectl passes the controller's
// validating webhook, the leader reports it enforced by both selected
// proxies, and it decides requests.
func (e *env) testPolicy(t *testing.T) {
	ctx := t.Context()
	e.Apply(t, policy)
	e.WaitEnforced(t, ns, "server", "2/2")
	if out, err := e.inPod(ctx, e.client, "get", serverURL+"/api/orders"); err != nil || !strings.Contains(out, "peer="+clientID) {
		t.Errorf("an allowed request: %v: %s", err, out)
	}
	if out, err := e.inPod(ctx, e.client, "get", serverURL+"/admin"); err == nil || !strings.Contains(out, "denied by policy shop/server") {
		t.Errorf("a request no rule allows: %v: %s", err, out)
	}
	// The validating webhook refuses a bad policy with the reason.
	bad := strings.Replace(policy, "name: server,", "name: bad,", 1)
	bad = strings.Replace(bad, `"spiffe://cluster.local/ns/shop/sa/client"`, `"spiffe://cluster.local/ns/*/sa/client"`, 1)
	if out, err := e.Run(ctx, bad, "kubectl", "apply", "-f", "-"); err == nil || !strings.Contains(out, "wildcard") {
		t.Errorf("a policy with a bad wildcard was not refused with the reason: %v: %s", err, out)
	}
}

// testJob: a Job's pod gets the native sidecar too; once its container
// ends, the sidecar is stopped and the Job completes.
func (e *env) testJob(t *testing.T) {
	ctx := t.Context()
	c := helminstall.Echo(false)
	c.Args = []string{"get", serverURL + "/api/migrate"}
	job := &batchv1.Job{
		ObjectMeta: metav1.ObjectMeta{Name: "migrate", Namespace: ns},
		Spec: batchv1.JobSpec{
			BackoffLimit: ptr(int32(2)),
			Template:     helminstall.PodTemplate("migrate", c, corev1.RestartPolicyNever),
		},
	}
	if _, err := e.cs.BatchV1().Jobs(ns).Create(ctx, job, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := meshtest.WaitFor(ctx, 2*time.Minute, func() error {
		j, err := e.cs.BatchV1().Jobs(ns).Get(ctx, "migrate", metav1.GetOptions{})
		if err != nil {
			return err
		}
		for _, c := range j.Status.Conditions {
			if c.Type == batchv1.JobComplete && c.Status == corev1.ConditionTrue {
				return nil
			}
			if c.Type == batchv1.JobFailed && c.Status == corev1.ConditionTrue {
				return fmt.Errorf("job failed: %s", c.Message)
			}
		}
		return fmt.Errorf("job not complete: %+v", j.Status)
	}); err != nil {
		t.Fatal(err)
	}
	pods, err := e.cs.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: "job-name=migrate"})
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range pods.Items {
		if p.Status.Phase != corev1.PodSucceeded {
			continue
		}
		for _, st := range p.Status.InitContainerStatuses {
			if st.Name == "mesh-proxy" && st.State.Terminated == nil {
				t.Errorf("job pod %s succeeded but its sidecar is %+v", p.Name, st.State)
			}
		}
		return
	}
	t.Errorf("no job pod succeeded")
}

// testKillLeader: the leader controller pod is killed while the client
// calls the server: no request fails, and the other replica leads.
func (e *env) testKillLeader(t *testing.T) {
	ctx := t.Context()
	lease, err := e.cs.CoordinationV1().Leases(system).Get(ctx, "mesh-controller", metav1.GetOptions{})
	if err != nil || lease.Spec.HolderIdentity == nil {
		t.Fatalf("leader lease: %v", err)
	}
	leader := *lease.Spec.HolderIdentity
	var names []string
	for _, p := range e.controllers(t) {
		names = append(names, p.Name)
	}
	if !slices.Contains(names, leader) {
		t.Fatalf("the lease holder %q is none of the controller pods %v", leader, names)
	}
	type result struct {
		l   load.Summary
		err error
	}
	done := make(chan result, 1)
	go func() {
		// 1,500 calls at 100/s: 15 s, across the kill and the re-election.
		l, err := helminstall.Load(ctx, time.Minute, ns, e.client, "http-load", serverURL, "1500", "4", "100", "keepalive")
		done <- result{l, err}
	}()
	time.Sleep(3 * time.Second)
	if err := e.cs.CoreV1().Pods(system).Delete(ctx, leader, metav1.DeleteOptions{GracePeriodSeconds: ptr(int64(0))}); err != nil {
		t.Fatal(err)
	}
	t.Logf("killed the leader %s", leader)
	r := <-done
	if r.err != nil {
		t.Fatal(r.err)
	}
	if r.l.Failed != 0 || r.l.Calls != 1500 {
		t.Fatalf("%d of %d requests failed while the leader was killed: %v", r.l.Failed, r.l.Calls, r.l.Errors)
	}
	if err := meshtest.WaitFor(ctx, time.Minute, func() error {
		l, err := e.cs.CoordinationV1().Leases(system).Get(ctx, "mesh-controller", metav1.GetOptions{})
		if err != nil {
			return err
		}
		if h := l.Spec.HolderIdentity; h == nil || *h == leader {
			return fmt.Errorf("still led by %v", h)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	e.MustRun(t, "kubectl", "rollout", "status", "-n", system, "deployment/mesh-controller", "--timeout", "2m")
}

// testUpgrade: helm upgrade with a changed value rolls the controller.
func (e *env) testUpgrade(t *testing.T) {
	before := map[string]bool{}
	for _, p := range e.controllers(t) {
		before[p.Name] = true
	}
	e.MustRun(t, "helm", "upgrade", "mesh", e.Chart, "-n", system, "--reuse-values", "--set", "identity.svidTTL=30m", "--wait", "--timeout", "4m")
	e.MustRun(t, "kubectl", "rollout", "status", "-n", system, "deployment/mesh-controller", "--timeout", "2m")
	if err := meshtest.WaitFor(t.Context(), time.Minute, func() error {
		pods := e.controllers(t)
		if len(pods) != 2 {
			return fmt.Errorf("%d controller pods", len(pods))
		}
		for _, p := range pods {
			if before[p.Name] {
				return fmt.Errorf("pod %s is from before the upgrade", p.Name)
			}
			if !slices.Contains(p.Spec.Containers[0].Args, "--svid-ttl=30m") {
				return fmt.Errorf("pod %s args %v", p.Name, p.Spec.Containers[0].Args)
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	// The mesh still works on the new controllers: a new pod gets an SVID.
	e.MustRun(t, "kubectl", "rollout", "restart", "-n", ns, "deployment/client")
	e.MustRun(t, "kubectl", "rollout", "status", "-n", ns, "deployment/client", "--timeout", "3m")
}

// testUninstall: helm uninstall leaves no webhook configuration behind,
// so pod creation is never blocked by a webhook nobody serves.
func (e *env) testUninstall(t *testing.T) {
	ctx := t.Context()
	e.MustRun(t, "helm", "uninstall", "mesh", "-n", system, "--wait", "--timeout", "2m")
	m, err := e.cs.AdmissionregistrationV1().MutatingWebhookConfigurations().List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	v, err := e.cs.AdmissionregistrationV1().ValidatingWebhookConfigurations().List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(m.Items)+len(v.Items) != 0 {
		t.Fatalf("webhook configurations left after uninstall: %d mutating, %d validating", len(m.Items), len(v.Items))
	}
	p := meshtest.PlainPod(ns, "after-uninstall")
	if _, err := e.cs.CoreV1().Pods(ns).Create(ctx, p, metav1.CreateOptions{}); err != nil {
		t.Fatalf("creating a pod in a labelled namespace after uninstall: %v", err)
	}
	if _, err := e.cs.AppsV1().Deployments(system).Get(ctx, "mesh-controller", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("the controller Deployment is still there: %v", err)
	}
}

// meshctl runs meshctl, its exit status as a meshctl.ExitError.
func (e *env) meshctl(t *testing.T, args ...string) (string, error) {
	t.Helper()
	out, code, err := e.Meshctl(t.Context(), args...)
	if err == nil && code != 0 {
		err = &meshctl.ExitError{Code: code, Err: fmt.Errorf("exit status %d", code)}
	}
	return out, err
}

func (e *env) inPod(ctx context.Context, pod string, args ...string) (string, error) {
	return helminstall.InPod(ctx, 20*time.Second, ns, pod, args...)
}

func (e *env) podIP(t *testing.T, name string) string {
	t.Helper()
	p, err := e.cs.CoreV1().Pods(ns).Get(t.Context(), name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return p.Status.PodIP
}

func ptr[T any](v T) *T { return &v }
