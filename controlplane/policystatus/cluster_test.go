package policystatus_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/mesh-dev/mesh/authz/api/v1alpha1"

	"github.com/mesh-dev/mesh/authz/api/v1alpha1/crdtest"
	"github.com/mesh-dev/mesh/authz/api/v1alpha1/policyclient"
	"github.com/mesh-dev/mesh/controlplane/inventory"
	"github.com/mesh-dev/mesh/controlplane/policystatus"
	"github.com/mesh-dev/mesh/e2e/cluster"
	"github.com/mesh-dev/mesh/e2e/clustertest"
)

func TestMain(m *testing.M) { os.Exit(clustertest.Run(m)) }

// writerRules are all the cluster-wide permissions the Writer gets here,
// so every test also checks they are enough: it reads pods, policies and
// (through the shared factory) ConfigMaps, and writes only policy status.
var writerRules = []rbacv1.PolicyRule{
	{APIGroups: []string{""}, Resources: []string{"pods", "configmaps"}, Verbs: []string{"list", "watch"}},
	{APIGroups: []string{v1alpha1.GroupVersion.Group}, Resources: []string{"authorizationpolicies"}, Verbs: []string{"list", "watch"}},
	{APIGroups: []string{v1alpha1.GroupVersion.Group}, Resources: []string{"authorizationpolicies/status"}, Verbs: []string{"update"}},
}

// reporterRules are all the Reporter gets, in the controller's namespace
// only.
var reporterRules = []rbacv1.PolicyRule{
	{APIGroups: []string{""}, Resources: []string{"configmaps"}, Verbs: []string{"create", "update", "delete"}},
}

// bound is how long a test waits for the Writer or Reporter to catch up.
const bound = 20 * time.Second

// env is one test's view of the shared cluster: the admin clients and a
// controller namespace of its own, so its reports are its own.
type env struct {
	c        *cluster.Cluster
	admin    kubernetes.Interface
	policies *policyclient.Client
	ns       string // the controller's namespace
	node     string
}

func setup(t *testing.T, controllerNS string, namespaces ...string) *env {
	t.Helper()
	c := clustertest.Get(t)
	crdtest.Install(t, c)
	pc, err := policyclient.New(c.RESTConfig())
	if err != nil {
		t.Fatal(err)
	}
	e := &env{c: c, admin: c.Client(), policies: pc, ns: controllerNS, node: "policystatus-node"}
	for _, ns := range append([]string{controllerNS}, namespaces...) {
		e.namespace(t, ns)
	}
	// Pods are bound to a Node object that no kubelet runs: the pod
	// garbage collector deletes pods of nodes that do not exist.
	_, err = e.admin.CoreV1().Nodes().Create(t.Context(), &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: e.node}}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	return e
}

// namespace creates ns (if new) and waits for its default ServiceAccount,
// without which the API server refuses pods.
func (e *env) namespace(t *testing.T, ns string) {
	t.Helper()
	_, err := e.admin.CoreV1().Namespaces().Create(t.Context(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	eventually(t, "default ServiceAccount in "+ns, func() error {
		_, err := e.admin.CoreV1().ServiceAccounts(ns).Get(t.Context(), "default", metav1.GetOptions{})
		return err
	})
}

// restricted is a REST config for user, bound to rules: cluster-wide, or
// in namespace ns only when ns is set.
func (e *env) restricted(t *testing.T, user, ns string, rules []rbacv1.PolicyRule) *rest.Config {
	t.Helper()
	ctx := t.Context()
	subjects := []rbacv1.Subject{{APIGroup: rbacv1.GroupName, Kind: rbacv1.UserKind, Name: user}}
	var err error
	if ns == "" {
		_, err = e.admin.RbacV1().ClusterRoles().Create(ctx, &rbacv1.ClusterRole{ObjectMeta: metav1.ObjectMeta{Name: user}, Rules: rules}, metav1.CreateOptions{})
		if err == nil || apierrors.IsAlreadyExists(err) {
			_, err = e.admin.RbacV1().ClusterRoleBindings().Create(ctx, &rbacv1.ClusterRoleBinding{
				ObjectMeta: metav1.ObjectMeta{Name: user},
				RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: user},
				Subjects:   subjects,
			}, metav1.CreateOptions{})
		}
	} else {
		_, err = e.admin.RbacV1().Roles(ns).Create(ctx, &rbacv1.Role{ObjectMeta: metav1.ObjectMeta{Name: user}, Rules: rules}, metav1.CreateOptions{})
		if err == nil || apierrors.IsAlreadyExists(err) {
			_, err = e.admin.RbacV1().RoleBindings(ns).Create(ctx, &rbacv1.RoleBinding{
				ObjectMeta: metav1.ObjectMeta{Name: user},
				RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: user},
				Subjects:   subjects,
			}, metav1.CreateOptions{})
		}
	}
	if err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "kubeconfig")
	if err := e.c.WriteKubeconfig(path, user, nil); err != nil {
		t.Fatal(err)
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", path)
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

// writer is a running Writer and its metrics.
type writer struct {
	metrics *prometheus.Registry
	log     *logBuffer
}

// startWriter runs a Writer, with only writerRules, until the test ends.
func (e *env) startWriter(t *testing.T, cfg policystatus.WriterConfig) *writer {
	t.Helper()
	rc := e.restricted(t, "mesh-policy-status-writer", "", writerRules)
	cs, err := kubernetes.NewForConfig(rc)
	if err != nil {
		t.Fatal(err)
	}
	pc, err := policyclient.New(rc)
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, "the writer's RBAC to apply", func() error {
		_, err := pc.List(t.Context(), "", metav1.ListOptions{Limit: 1})
		return err
	})
	w := &writer{metrics: prometheus.NewRegistry(), log: &logBuffer{}}
	factory := informers.NewSharedInformerFactory(cs, 0)
	inf := policyclient.NewInformer(pc, 0)
	cfg.Policies, cfg.PolicyInformer, cfg.Informers, cfg.Namespace = pc, inf, factory, e.ns
	cfg.Registerer = w.metrics
	cfg.Logger = slog.New(slog.NewTextHandler(io.MultiWriter(t.Output(), w.log), &slog.HandlerOptions{Level: slog.LevelDebug}))
	wr, err := policystatus.NewWriter(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	factory.Start(ctx.Done())
	infDone := make(chan struct{})
	go func() { defer close(infDone); inf.RunWithContext(ctx) }()
	done := make(chan error, 1)
	go func() { done <- wr.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Writer.Run: %v", err)
		}
		<-infDone
		factory.Shutdown()
	})
	return w
}

// writes is mesh_controller_policy_status_writes_total{result}.
func (w *writer) writes(t *testing.T, result string) float64 {
	t.Helper()
	return counter(t, w.metrics, "mesh_controller_policy_status_writes_total", result)
}

func counter(t *testing.T, reg *prometheus.Registry, name, result string) float64 {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
		for _, m := range f.GetMetric() {
			if len(m.GetLabel()) == 0 && result == "" {
				return m.GetCounter().GetValue()
			}
			for _, l := range m.GetLabel() {
				if l.GetName() == "result" && l.GetValue() == result {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	t.Fatalf("no %s{result=%q}", name, result)
	return 0
}

// logBuffer collects log lines safely across goroutines.
type logBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func eventually(t *testing.T, what string, f func() error) {
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
		time.Sleep(50 * time.Millisecond)
	}
}

// podSpec is a test pod: meshed or not, its labels and named ports.
type podSpec struct {
	meshed      bool
	hostNetwork bool
	labels      map[string]string
	ports       []string
}

// pod creates a pod bound to the test node; nothing runs it, which the
// Writer does not need.
func (e *env) pod(t *testing.T, ns, name string, s podSpec) *corev1.Pod {
	t.Helper()
	app := corev1.Container{Name: "app", Image: "mesh-e2e/echo"}
	for i, p := range s.ports {
		app.Ports = append(app.Ports, corev1.ContainerPort{Name: p, ContainerPort: int32(8080 + i), Protocol: corev1.ProtocolTCP})
	}
	spec := corev1.PodSpec{NodeName: e.node, Containers: []corev1.Container{app}, HostNetwork: s.hostNetwork}
	if s.meshed {
		always := corev1.ContainerRestartPolicyAlways
		spec.InitContainers = []corev1.Container{{Name: inventory.ProxyContainer, Image: "mesh/proxy", RestartPolicy: &always}}
	}
	p, err := e.admin.CoreV1().Pods(ns).Create(t.Context(), &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: s.labels}, Spec: spec}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create pod %s/%s: %v", ns, name, err)
	}
	return p
}

// phase sets a pod's phase, as its kubelet would.
func (e *env) phase(t *testing.T, ns, name string, phase corev1.PodPhase) {
	t.Helper()
	p, err := e.admin.CoreV1().Pods(ns).Get(t.Context(), name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	p.Status.Phase = phase
	if _, err := e.admin.CoreV1().Pods(ns).UpdateStatus(t.Context(), p, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// report writes a fake replica's report ConfigMap, as its Reporter would.
func (e *env) report(t *testing.T, replica string, updated time.Time, counts map[string]map[int64]int32) {
	t.Helper()
	b, err := json.Marshal(policystatus.Report{Replica: replica, Updated: updated, Policies: counts})
	if err != nil {
		t.Fatal(err)
	}
	e.rawReport(t, policystatus.ReportName(replica), string(b))
}

func (e *env) rawReport(t *testing.T, name, data string) {
	t.Helper()
	cm := &corev1.ConfigMap{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: e.ns, Labels: map[string]string{policystatus.ReportLabel: "true"}},
		Data:       map[string]string{policystatus.ReportKey: data},
	}
	cms := e.admin.CoreV1().ConfigMaps(e.ns)
	if _, err := cms.Update(t.Context(), cm, metav1.UpdateOptions{}); apierrors.IsNotFound(err) {
		_, err = cms.Create(t.Context(), cm, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
	} else if err != nil {
		t.Fatal(err)
	}
}

// want is what a test expects of a status: the enforced column, the
// observed generation, and type=status/reason of each condition (with a
// piece of its message after a colon, when given).
type want struct {
	enforced   string
	generation int64
	workloads  []string
	conds      []string
}

// check compares a status with w, saying what differs.
func (w want) check(st v1alpha1.AuthorizationPolicyStatus) error {
	var diffs []string
	if st.Enforced != w.enforced {
		diffs = append(diffs, fmt.Sprintf("enforced %q, want %q", st.Enforced, w.enforced))
	}
	if st.ObservedGeneration != w.generation {
		diffs = append(diffs, fmt.Sprintf("observedGeneration %d, want %d", st.ObservedGeneration, w.generation))
	}
	if w.workloads != nil && strings.Join(st.Workloads, ",") != strings.Join(w.workloads, ",") {
		diffs = append(diffs, fmt.Sprintf("workloads %v, want %v", st.Workloads, w.workloads))
	}
	for _, c := range w.conds {
		head, msg, _ := strings.Cut(c, ": ")
		typ, rest, _ := strings.Cut(head, "=")
		status, reason, _ := strings.Cut(rest, "/")
		found := false
		for _, got := range st.Conditions {
			if got.Type != typ {
				continue
			}
			found = true
			if string(got.Status) != status || got.Reason != reason || !strings.Contains(got.Message, msg) || got.ObservedGeneration != w.generation {
				diffs = append(diffs, fmt.Sprintf("%s=%s/%s: %q at generation %d, want %s", got.Type, got.Status, got.Reason, got.Message, got.ObservedGeneration, c))
			}
		}
		if !found {
			diffs = append(diffs, "no condition "+typ)
		}
	}
	if len(diffs) > 0 {
		return fmt.Errorf("%s", strings.Join(diffs, "; "))
	}
	return nil
}

// await waits until policy ns/name's status is w, and returns it.
func (e *env) await(t *testing.T, ns, name string, w want) *v1alpha1.AuthorizationPolicy {
	t.Helper()
	var p *v1alpha1.AuthorizationPolicy
	eventually(t, "status of "+ns+"/"+name, func() error {
		var err error
		p, err = e.policies.Get(t.Context(), ns, name)
		if err != nil {
			return err
		}
		return w.check(p.Status)
	})
	return p
}

// createPolicy stores p with the admin's typed client: there is no
// webhook here, so what the CRD schema allows is stored.
func (e *env) createPolicy(t *testing.T, p *v1alpha1.AuthorizationPolicy) *v1alpha1.AuthorizationPolicy {
	t.Helper()
	out, err := e.policies.Create(t.Context(), p)
	if err != nil {
		t.Fatalf("create policy %s/%s: %v", p.Namespace, p.Name, err)
	}
	return out
}

func selectApp(app string) *metav1.LabelSelector {
	return &metav1.LabelSelector{MatchLabels: map[string]string{"app": app}}
}

// counts is one policy's report entry.
func counts(key string, gens map[int64]int32) map[string]map[int64]int32 {
	return map[string]map[int64]int32{key: maps.Clone(gens)}
}

func errorf(format string, args ...any) error { return fmt.Errorf(format, args...) }

func restConfig(t *testing.T, kubeconfig string) *rest.Config {
	t.Helper()
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}
