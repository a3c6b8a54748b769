// Package outbound_test runs the outbound side of the mesh on the real
// local cluster: Services balanced request by request by the callers'
// proxies (no kube-proxy here: a ClusterIP reaches nothing but through
// them), over pooled mTLS connections, with metrics on both sides that
// agree with what the client counted.
package outbound_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"

	"github.com/mesh-dev/mesh/authz/api/v1alpha1/crdtest"
	"github.com/mesh-dev/mesh/controlplane/trustbundle"
	"github.com/mesh-dev/mesh/e2e/clustertest"
	"github.com/mesh-dev/mesh/e2e/load"
	"github.com/mesh-dev/mesh/e2e/meshtest"
	"github.com/mesh-dev/mesh/e2e/node"
	"github.com/mesh-dev/mesh/e2e/prereq"
	"github.com/mesh-dev/mesh/internal/tcpdump"
)

func TestMain(m *testing.M) { os.Exit(clustertest.Run(m)) }

const (
	ns       = "lb"
	clientID = "spiffe://cluster.local/ns/lb/sa/client"
)

type env struct {
	cs        kubernetes.Interface
	clusterIP string
}

// TestOutbound: the acceptance of the outbound issue, on the local
// cluster.
func TestOutbound(t *testing.T) {
	prereq.Command(t, "tcpdump")
	c := clustertest.Get(t)
	ctx := t.Context()
	e := &env{cs: c.Client()}
	crdtest.Install(t, c)
	stopNode, err := meshtest.StartNode(c, filepath.Join(t.TempDir(), "node"), slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(stopNode)
	for _, n := range []string{"mesh-system", ns} {
		if err := meshtest.EnsureNamespace(ctx, e.cs, n, "client", "server"); err != nil {
			t.Fatal(err)
		}
	}
	ctl, err := meshtest.StartController(c, "ctl", fmt.Sprintf("%s:%d", node.NodeIP, meshtest.IdentityPort))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctl.Kill()
		if t.Failed() {
			t.Logf("controller log (tail):\n%s", tail(ctl.Log(), 3000))
		}
	})
	if err := meshtest.WaitFor(ctx, time.Minute, func() error {
		_, err := e.cs.CoreV1().ConfigMaps(ns).Get(ctx, trustbundle.ConfigMapName, metav1.GetOptions{})
		return err
	}); err != nil {
		t.Fatal(err)
	}

	// The servers: a Deployment of meshed echo pods behind a Service whose
	// ports declare gRPC and HTTP.
	tmpl := meshtest.MeshedPod(ns, "server", meshtest.PodOptions{ServiceAccount: "server", Labels: map[string]string{"app": "server"}})
	dep := &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: "server", Namespace: ns},
		Spec: appsv1.DeploymentSpec{
			Replicas: ptr(int32(3)),
			Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "server"}},
			Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{"app": "server"}}, Spec: tmpl.Spec},
		},
	}
	if _, err := e.cs.AppsV1().Deployments(ns).Create(ctx, dep, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	svc, err := e.cs.CoreV1().Services(ns).Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "server", Namespace: ns},
		Spec: corev1.ServiceSpec{
			Selector: map[string]string{"app": "server"},
			Ports: []corev1.ServicePort{
				{Name: "grpc", Port: 9090, TargetPort: intstr.FromInt32(9090)},
				{Name: "http", Port: 80, TargetPort: intstr.FromInt32(8080)},
			},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	e.clusterIP = svc.Spec.ClusterIP
	if _, err := meshtest.CreateRunning(ctx, e.cs, meshtest.MeshedPod(ns, "client", meshtest.PodOptions{ServiceAccount: "client"})); err != nil {
		t.Fatal(err)
	}
	if _, err := e.waitReady(ctx, 3); err != nil {
		t.Fatal(err)
	}

	t.Run("grpc-spread-and-metrics", e.testGRPCSpread)
	t.Run("grpc-endpoint-killed", e.testKill)
	t.Run("grpc-scale-up", e.testScaleUp)
	t.Run("http-keepalive-and-close", e.testHTTP)
}

// testGRPCSpread: one long-lived gRPC connection to the Service: its calls
// are spread over the three endpoints, and the proxies' metrics on both
// sides agree with the client's own counts.
func (e *env) testGRPCSpread(t *testing.T) {
	ctx := t.Context()
	servers := e.serverPods(t)
	before := e.scrape(t, servers)
	res := e.run(t, "grpc-load", fmt.Sprintf("%s:9090", e.clusterIP), "3000", "8", "400")
	after := e.scrape(t, servers)
	if res.Failed != 0 {
		t.Fatalf("%d of %d calls failed: %v", res.Failed, res.Calls, res.Errors)
	}
	if len(res.Hosts) != 3 {
		t.Fatalf("calls reached %d endpoints, want 3: %v", len(res.Hosts), res.Hosts)
	}
	answered := res.OK - res.Codes["5"] // NOT_FOUND carries no host
	for host, n := range res.Hosts {
		if share := float64(n) / float64(answered); share < 0.20 || share > 0.46 {
			t.Errorf("%s answered %d of %d calls (%.0f%%), want 20%%..46%%", host, n, answered, 100*share)
		}
	}
	t.Logf("spread: %v", res.Hosts)

	// Both sides' metrics against the client's counts.
	out := sel{"direction": "outbound", "service": ns + "/server"}
	in := sel{"direction": "inbound", "peer": clientID, "route": "/grpc.testing.TestService/UnaryCall"}
	for _, tc := range []struct {
		what  string
		got   float64
		want  int
		where string
	}{
		{"calls", delta(before, after, "client", out), res.Calls, "client proxy"},
		{"NOT_FOUND", delta(before, after, "client", out.with("grpc_status", "5")), res.Codes["5"], "client proxy"},
		{"OK", delta(before, after, "client", out.with("grpc_status", "0")), res.Codes["0"], "client proxy"},
		{"calls", delta(before, after, "servers", in), res.Calls, "server proxies"},
		{"NOT_FOUND", delta(before, after, "servers", in.with("grpc_status", "5")), res.Codes["5"], "server proxies"},
		{"OK", delta(before, after, "servers", in.with("grpc_status", "0")), res.Codes["0"], "server proxies"},
	} {
		if !within1(tc.got, tc.want) {
			t.Errorf("%s: %s counted %v, the client %d (more than 1%% apart)", tc.where, tc.what, tc.got, tc.want)
		}
	}
	// The client side labels by the endpoints' identity.
	if n := delta(before, after, "client", out.with("peer", "spiffe://cluster.local/ns/lb/sa/server")); !within1(n, res.Calls) {
		t.Errorf("client proxy: %v calls labelled with the server identity, want %d", n, res.Calls)
	}
	_ = ctx
}

// testKill: an endpoint pod is deleted during a run; only calls in flight
// to it may fail (at most the concurrency), and the rest go elsewhere.
func (e *env) testKill(t *testing.T) {
	ctx := t.Context()
	pods := e.serverPods(t)
	victim := pods[0].Name
	const concurrency = 4
	done := make(chan load.Summary, 1)
	go func() {
		done <- e.run(t, "grpc-load", fmt.Sprintf("%s:9090", e.clusterIP), "3000", fmt.Sprint(concurrency), "150")
	}()
	time.Sleep(6 * time.Second)
	if err := e.cs.CoreV1().Pods(ns).Delete(ctx, victim, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	killed := time.Now()
	res := <-done
	t.Logf("killed %s %s into the run; hosts %v; failed %d: %v", victim, time.Since(killed), res.Hosts, res.Failed, res.Errors)
	if res.Failed > concurrency {
		t.Fatalf("%d calls failed, more than the %d that can be in flight to the deleted pod: %v", res.Failed, concurrency, res.Errors)
	}
	if res.Hosts[victim] == 0 || len(res.Hosts) < 3 {
		t.Fatalf("the run did not use the deleted pod before, and the others: %v", res.Hosts)
	}
	if _, err := e.waitReady(ctx, 3); err != nil {
		t.Fatal(err)
	}
}

// testScaleUp: the Deployment grows to 5 during a run; the new pods get
// calls within 5s of being ready endpoints.
func (e *env) testScaleUp(t *testing.T) {
	ctx := t.Context()
	old := map[string]bool{}
	for _, p := range e.serverPods(t) {
		old[p.Name] = true
	}
	done := make(chan load.Summary, 1)
	go func() { done <- e.run(t, "grpc-load", fmt.Sprintf("%s:9090", e.clusterIP), "6000", "4", "200") }()
	time.Sleep(2 * time.Second)
	scale, err := e.cs.AppsV1().Deployments(ns).GetScale(ctx, "server", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	scale.Spec.Replicas = 5
	if _, err := e.cs.AppsV1().Deployments(ns).UpdateScale(ctx, "server", scale, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	readyAt, err := e.waitReady(ctx, 5)
	if err != nil {
		t.Fatal(err)
	}
	res := <-done
	if res.Failed != 0 {
		t.Fatalf("%d calls failed while scaling up: %v", res.Failed, res.Errors)
	}
	newPods := 0
	for pod, ready := range readyAt {
		if old[pod] {
			continue
		}
		newPods++
		first, ok := res.FirstSeen[pod]
		if !ok {
			t.Errorf("new pod %s never got a call (hosts %v)", pod, res.Hosts)
			continue
		}
		if lag := time.UnixMilli(first).Sub(ready); lag > 5*time.Second {
			t.Errorf("new pod %s got its first call %s after it was a ready endpoint, want within 5s", pod, lag)
		} else {
			t.Logf("new pod %s: first call %s after it was ready", pod, lag)
		}
	}
	if newPods != 2 {
		t.Fatalf("%d new ready pods, want 2: %v", newPods, readyAt)
	}
}

// testHTTP: HTTP/1.1 clients with keep-alive and with a new connection per
// request: every endpoint is used, the metrics agree, and a capture on the
// bridge shows the client's proxy opening a few mTLS connections, not one
// per application connection.
func (e *env) testHTTP(t *testing.T) {
	clientIP := e.podIP(t, "client")
	capture := tcpdump.Start(t, "", node.Bridge, fmt.Sprintf("src host %s and tcp port 8080", clientIP))
	servers := e.serverPods(t)
	url := fmt.Sprintf("http://%s:80", e.clusterIP)
	for _, mode := range []string{"keepalive", "close"} {
		before := e.scrape(t, servers)
		res := e.run(t, "http-load", url, "600", "4", "300", mode)
		after := e.scrape(t, servers)
		if res.Failed != 0 {
			t.Fatalf("%s: %d of %d requests failed: %v", mode, res.Failed, res.Calls, res.Errors)
		}
		if len(res.Hosts) != len(servers) {
			t.Errorf("%s: requests reached %d endpoints, want %d: %v", mode, len(res.Hosts), len(servers), res.Hosts)
		}
		out := sel{"direction": "outbound", "service": ns + "/server"}
		in := sel{"direction": "inbound", "peer": clientID, "method": "GET"}
		for _, tc := range []struct {
			what, where string
			got         float64
			want        int
		}{
			{"requests", "client proxy", delta(before, after, "client", out), res.Calls},
			{"5xx", "client proxy", delta(before, after, "client", out.with("status_class", "5xx")), res.Statuses["503"]},
			{"requests", "server proxies", delta(before, after, "servers", in), res.Calls},
			{"5xx", "server proxies", delta(before, after, "servers", in.with("status_class", "5xx")), res.Statuses["503"]},
		} {
			if !within1(tc.got, tc.want) {
				t.Errorf("%s: %s counted %v %s, the client %d", mode, tc.where, tc.got, tc.what, tc.want)
			}
		}
		t.Logf("%s: %v", mode, res.Hosts)
	}
	if err := capture.Stop(); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("tcpdump", "-nn", "-r", capture.Path, "tcp[tcpflags] & (tcp-syn|tcp-ack) == tcp-syn").CombinedOutput()
	if err != nil {
		t.Fatalf("read capture: %v\n%s", err, out)
	}
	syns := 0
	for _, l := range strings.Split(string(out), "\n") {
		if strings.Contains(l, "Flags [S]") {
			syns++
		}
	}
	// 1,200 requests, 600 of them on a connection of their own: the
	// proxy's pool opens a few connections per endpoint at most.
	if syns == 0 || syns > 3*len(servers) {
		t.Fatalf("the client's proxy opened %d connections to port 8080 for 1,200 requests (600 application connections); want 1..%d", syns, 3*len(servers))
	}
	t.Logf("connections opened by the client's proxy: %d", syns)
}

// run runs a load mode of mesh-e2e-echo in the client pod.
func (e *env) run(t *testing.T, args ...string) load.Summary {
	cmd := meshtest.InPod(t.Context(), ns, "client", append([]string{filepath.Join(prereq.BinDir(), "mesh-e2e-echo")}, args...)...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Errorf("%s: %v\n%s", strings.Join(args, " "), err, stderr.String())
		return load.Summary{}
	}
	l, err := load.Parse(out)
	if err != nil {
		t.Errorf("%s: %v", strings.Join(args, " "), err)
	}
	return l
}

// waitReady waits until the Service's endpoint slice lists n ready
// endpoints on the gRPC port, and says when each pod first was.
func (e *env) waitReady(ctx context.Context, n int) (map[string]time.Time, error) {
	readyAt := map[string]time.Time{}
	err := meshtest.WaitFor(ctx, 3*time.Minute, func() error {
		slices, err := e.cs.DiscoveryV1().EndpointSlices(ns).List(ctx, metav1.ListOptions{LabelSelector: discoveryv1.LabelServiceName + "=server"})
		if err != nil {
			return err
		}
		ready := 0
		for _, s := range slices.Items {
			for _, ep := range s.Endpoints {
				if ep.Conditions.Ready != nil && *ep.Conditions.Ready && ep.TargetRef != nil {
					ready++
					if _, ok := readyAt[ep.TargetRef.Name]; !ok {
						readyAt[ep.TargetRef.Name] = time.Now()
					}
				}
			}
		}
		if ready != n {
			return fmt.Errorf("%d ready endpoints, want %d", ready, n)
		}
		return nil
	})
	return readyAt, err
}

func (e *env) serverPods(t *testing.T) []corev1.Pod {
	t.Helper()
	list, err := e.cs.CoreV1().Pods(ns).List(t.Context(), metav1.ListOptions{LabelSelector: "app=server"})
	if err != nil {
		t.Fatal(err)
	}
	var out []corev1.Pod
	for _, p := range list.Items {
		if p.DeletionTimestamp == nil && p.Status.PodIP != "" {
			out = append(out, p)
		}
	}
	return out
}

func (e *env) podIP(t *testing.T, name string) string {
	t.Helper()
	p, err := e.cs.CoreV1().Pods(ns).Get(t.Context(), name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return p.Status.PodIP
}

// scrape reads the proxies' metrics from their admin ports: the client's,
// and every server's summed.
func (e *env) scrape(t *testing.T, servers []corev1.Pod) map[string][]*dto.Metric {
	t.Helper()
	out := map[string][]*dto.Metric{}
	out["client"] = scrapeOne(t, e.podIP(t, "client"))
	for _, p := range servers {
		out["servers"] = append(out["servers"], scrapeOne(t, p.Status.PodIP)...)
	}
	return out
}

var httpClient = &http.Client{Timeout: 10 * time.Second}

func scrapeOne(t *testing.T, ip string) []*dto.Metric {
	t.Helper()
	resp, err := httpClient.Get(fmt.Sprintf("http://%s:15020/metrics", ip))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if f, ok := families["mesh_proxy_http_requests_total"]; ok {
		return f.Metric
	}
	return nil
}

// sel selects series by label values.
type sel map[string]string

func (s sel) with(k, v string) sel {
	out := sel{k: v}
	for kk, vv := range s {
		out[kk] = vv
	}
	return out
}

func sum(ms []*dto.Metric, s sel) float64 {
	total := 0.0
	for _, m := range ms {
		labels := map[string]string{}
		for _, l := range m.GetLabel() {
			labels[l.GetName()] = l.GetValue()
		}
		match := true
		for k, v := range s {
			if labels[k] != v {
				match = false
			}
		}
		if match {
			total += m.GetCounter().GetValue()
		}
	}
	return total
}

func delta(before, after map[string][]*dto.Metric, side string, s sel) float64 {
	return sum(after[side], s) - sum(before[side], s)
}

// within1 reports whether got is within 1% of want.
func within1(got float64, want int) bool {
	d := got - float64(want)
	if d < 0 {
		d = -d
	}
	return want > 0 && d <= 0.01*float64(want)
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

func ptr[T any](v T) *T { return &v }
