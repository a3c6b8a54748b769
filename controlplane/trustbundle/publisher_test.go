package trustbundle_test

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"slices"
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
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/client-go/util/retry"

	"github.com/mesh-dev/mesh/controlplane/trustbundle"
	"github.com/mesh-dev/mesh/e2e/cluster"
	"github.com/mesh-dev/mesh/e2e/clustertest"
	"github.com/mesh-dev/mesh/internal/testpki"
)

func TestMain(m *testing.M) { os.Exit(clustertest.Run(m)) }

// rbacRules are the permissions the Publisher needs, and all it gets in
// these tests: the integrator's ClusterRole must grant them.
var rbacRules = []rbacv1.PolicyRule{
	{APIGroups: []string{""}, Resources: []string{"pods", "namespaces"}, Verbs: []string{"list", "watch"}},
	{APIGroups: []string{""}, Resources: []string{"configmaps"}, Verbs: []string{"list", "watch", "create"}},
	{APIGroups: []string{""}, Resources: []string{"configmaps"}, ResourceNames: []string{trustbundle.ConfigMapName}, Verbs: []string{"update", "delete"}},
}

// bound is how long a test waits for the Publisher to catch up.
const bound = 20 * time.Second

// source is a trust bundle the test changes.
type source struct {
	mu      sync.Mutex
	roots   []*x509.Certificate
	updated chan struct{}
}

func newSource(roots ...*x509.Certificate) *source {
	return &source{roots: roots, updated: make(chan struct{})}
}

func (s *source) Bundle() []*x509.Certificate {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.roots)
}

func (s *source) Updated() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.updated
}

func (s *source) Set(roots ...*x509.Certificate) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.roots = roots
	close(s.updated)
	s.updated = make(chan struct{})
}

// newRoot is the root of a new CA, made at run time.
func newRoot(t *testing.T) *x509.Certificate {
	t.Helper()
	roots := testpki.New(t, "cluster.local").CA.Bundle()
	if len(roots) != 1 {
		t.Fatalf("a new CA has %d roots", len(roots))
	}
	return roots[0]
}

// publisher is a running Publisher, with the client and metrics it uses.
type publisher struct {
	*trustbundle.Publisher
	metrics *prometheus.Registry
}

// start runs a Publisher with the client cs until the test ends, and
// fails the test if Run returns an error. The Publisher logs to the test's
// output and to log, if not nil.
func start(t *testing.T, cs kubernetes.Interface, src trustbundle.Source, log io.Writer, namespaces ...string) *publisher {
	t.Helper()
	out := t.Output()
	if log != nil {
		out = io.MultiWriter(out, log)
	}
	factory := informers.NewSharedInformerFactory(cs, 0)
	reg := prometheus.NewRegistry()
	p, err := trustbundle.New(trustbundle.Config{
		Kube: cs, Informers: factory, Bundle: src, Namespaces: namespaces, Registerer: reg,
		Logger: slog.New(slog.NewTextHandler(out, &slog.HandlerOptions{Level: slog.LevelDebug})),
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	factory.Start(ctx.Done())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
		factory.Shutdown()
	})
	return &publisher{p, reg}
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

// count is how many lines contain every one of subs.
func (l *logBuffer) count(subs ...string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for line := range strings.Lines(l.b.String()) {
		all := true
		for _, s := range subs {
			all = all && strings.Contains(line, s)
		}
		if all {
			n++
		}
	}
	return n
}

// writes is the value of mesh_controller_trust_bundle_writes_total{result}.
func (p *publisher) writes(t *testing.T, result string) float64 {
	t.Helper()
	families, err := p.metrics.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() != "mesh_controller_trust_bundle_writes_total" {
			continue
		}
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "result" && l.GetValue() == result {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	t.Fatalf("no mesh_controller_trust_bundle_writes_total{result=%q}", result)
	return 0
}

// restricted returns a client with only rbacRules, so every test also
// checks that the rules are enough.
func restricted(t *testing.T, c *cluster.Cluster) kubernetes.Interface {
	t.Helper()
	ctx, admin := t.Context(), c.Client()
	const user = "mesh-trust-bundle-test"
	role := &rbacv1.ClusterRole{ObjectMeta: metav1.ObjectMeta{Name: user}, Rules: rbacRules}
	if _, err := admin.RbacV1().ClusterRoles().Create(ctx, role, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	binding := &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: user},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: user},
		Subjects:   []rbacv1.Subject{{APIGroup: rbacv1.GroupName, Kind: rbacv1.UserKind, Name: user}},
	}
	if _, err := admin.RbacV1().ClusterRoleBindings().Create(ctx, binding, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "kubeconfig")
	if err := c.WriteKubeconfig(path, user, nil); err != nil {
		t.Fatal(err)
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", path)
	if err != nil {
		t.Fatal(err)
	}
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	// The authorizer sees a new binding within moments.
	eventually(t, "the test's RBAC to apply", func() error {
		_, err := cs.CoreV1().ConfigMaps("default").List(ctx, metav1.ListOptions{Limit: 1})
		return err
	})
	return cs
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

// namespace creates namespace name and waits for its default
// ServiceAccount, without which the API server refuses pods.
func namespace(t *testing.T, cs kubernetes.Interface, name string, labels map[string]string) {
	t.Helper()
	if _, err := cs.CoreV1().Namespaces().Create(t.Context(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels}}, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create namespace %s: %v", name, err)
	}
	eventually(t, "default ServiceAccount in "+name, func() error {
		_, err := cs.CoreV1().ServiceAccounts(name).Get(t.Context(), "default", metav1.GetOptions{})
		return err
	})
}

// podKind is how a test pod runs (or does not run) mesh's proxy.
type podKind int

const (
	unmeshed      podKind = iota
	meshedInit            // native sidecar: init container mesh-proxy
	meshedSidecar         // plain container mesh-proxy
	hostNetwork           // mesh-proxy, but on the node's network: not meshed
	lookalike             // an init container named like, but not, mesh-proxy
)

// pod creates a pod bound to a node that does not exist: nothing runs it,
// which the Publisher does not need.
func pod(t *testing.T, cs kubernetes.Interface, ns, name string, kind podKind) {
	t.Helper()
	spec := corev1.PodSpec{NodeName: "fake-node-1", Containers: []corev1.Container{{Name: "app", Image: "mesh-e2e/echo"}}}
	always := corev1.ContainerRestartPolicyAlways
	proxy := corev1.Container{Name: "mesh-proxy", Image: "mesh/proxy", RestartPolicy: &always}
	switch kind {
	case meshedInit:
		spec.InitContainers = []corev1.Container{proxy}
	case meshedSidecar:
		proxy.RestartPolicy = nil
		spec.Containers = append(spec.Containers, proxy)
	case hostNetwork:
		spec.HostNetwork = true
		spec.InitContainers = []corev1.Container{proxy}
	case lookalike:
		proxy.Name = "mesh-proxy-init"
		spec.InitContainers = []corev1.Container{proxy}
	}
	if _, err := cs.CoreV1().Pods(ns).Create(t.Context(), &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: spec}, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create pod %s/%s: %v", ns, name, err)
	}
}

// published reads ns's ConfigMap and checks it holds exactly roots, in
// order, and nothing else.
func published(ctx context.Context, cs kubernetes.Interface, ns string, roots []*x509.Certificate) error {
	cm, err := cs.CoreV1().ConfigMaps(ns).Get(ctx, trustbundle.ConfigMapName, metav1.GetOptions{})
	if err != nil {
		return err
	}
	if got := cm.Labels[trustbundle.ManagedByLabel]; got != trustbundle.ManagedBy {
		return fmt.Errorf("label %s is %q", trustbundle.ManagedByLabel, got)
	}
	if len(cm.Data) != 1 || len(cm.BinaryData) != 0 || (cm.Immutable != nil && *cm.Immutable) {
		return fmt.Errorf("ConfigMap has data keys %v, binary keys %v, immutable %v", slices.Collect(maps.Keys(cm.Data)), len(cm.BinaryData), cm.Immutable)
	}
	got, err := parsePEM(cm.Data[trustbundle.Key])
	if err != nil {
		return err
	}
	if !slices.EqualFunc(got, roots, (*x509.Certificate).Equal) {
		return fmt.Errorf("%d roots published (%v), want %d (%v)", len(got), subjects(got), len(roots), subjects(roots))
	}
	return nil
}

// parsePEM parses a bundle as a proxy would: CERTIFICATE blocks only,
// nothing else around them.
func parsePEM(s string) ([]*x509.Certificate, error) {
	var certs []*x509.Certificate
	rest := []byte(s)
	for len(strings.TrimSpace(string(rest))) > 0 {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			return nil, fmt.Errorf("not PEM after %d certificates: %q", len(certs), rest)
		}
		if b.Type != "CERTIFICATE" || len(b.Headers) > 0 {
			return nil, fmt.Errorf("block %d is %q with headers %v", len(certs)+1, b.Type, b.Headers)
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return nil, fmt.Errorf("block %d: %w", len(certs)+1, err)
		}
		certs = append(certs, c)
	}
	return certs, nil
}

func subjects(certs []*x509.Certificate) []string {
	var s []string
	for _, c := range certs {
		s = append(s, c.Subject.String()+"#"+c.SerialNumber.String())
	}
	return s
}

// absent checks ns has no ConfigMap of the Publisher's name, or, if want
// is not nil, has exactly want's data untouched.
func absent(ctx context.Context, cs kubernetes.Interface, ns string, want *corev1.ConfigMap) error {
	cm, err := cs.CoreV1().ConfigMaps(ns).Get(ctx, trustbundle.ConfigMapName, metav1.GetOptions{})
	switch {
	case want == nil && apierrors.IsNotFound(err):
		return nil
	case err != nil:
		return err
	case want == nil:
		return fmt.Errorf("%s has a %s ConfigMap: %v", ns, trustbundle.ConfigMapName, cm.Data)
	case cm.ResourceVersion != want.ResourceVersion:
		return fmt.Errorf("%s's own %s ConfigMap was written: %v", ns, trustbundle.ConfigMapName, cm.Data)
	}
	return nil
}

// TestWhichNamespaces checks which namespaces get the bundle, whether their
// reason exists before the Publisher starts or comes after, and that every
// one of them follows a root rotation: a second root added, then the first
// removed.
func TestWhichNamespaces(t *testing.T) {
	c := clustertest.Get(t)
	admin, ctx := c.Client(), t.Context()
	cs := restricted(t, c)
	r1, r2 := newRoot(t), newRoot(t)

	type setup struct {
		labels map[string]string
		pods   []podKind
		// own is a ConfigMap of the Publisher's name that the namespace's
		// owner made (not the Publisher's: no label).
		own bool
	}
	injected := map[string]string{trustbundle.InjectLabel: trustbundle.InjectEnabled}
	cases := []struct {
		name       string
		setup      setup
		configured bool // in Config.Namespaces
		later      bool // made after the Publisher started
		want       bool
	}{
		{name: "meshed-init", setup: setup{pods: []podKind{unmeshed, meshedInit}}, want: true},
		{name: "meshed-sidecar", setup: setup{pods: []podKind{meshedSidecar}}, want: true},
		{name: "meshed-later", setup: setup{pods: []podKind{unmeshed, meshedInit}}, later: true, want: true},
		{name: "inject", setup: setup{labels: injected}, want: true},
		{name: "inject-later", setup: setup{labels: injected}, later: true, want: true},
		{name: "configured", configured: true, want: true},
		{name: "configured-later", configured: true, later: true, want: true},
		{name: "unmeshed", setup: setup{pods: []podKind{unmeshed, unmeshed}}},
		{name: "unmeshed-later", setup: setup{pods: []podKind{unmeshed}}, later: true},
		{name: "host-network", setup: setup{pods: []podKind{hostNetwork}}},
		{name: "lookalike", setup: setup{pods: []podKind{lookalike}}},
		{name: "inject-disabled", setup: setup{labels: map[string]string{trustbundle.InjectLabel: "disabled"}}},
		{name: "empty"},
		{name: "owners-own", setup: setup{pods: []podKind{unmeshed}, own: true}},
	}
	name := func(n string) string { return "which-" + n }
	owned := map[string]*corev1.ConfigMap{}
	create := func(n string, s setup) {
		namespace(t, admin, name(n), s.labels)
		if s.own {
			cm, err := admin.CoreV1().ConfigMaps(name(n)).Create(ctx, &corev1.ConfigMap{
				ObjectMeta: metav1.ObjectMeta{Name: trustbundle.ConfigMapName},
				Data:       map[string]string{"mine": "not the mesh's"},
			}, metav1.CreateOptions{})
			if err != nil {
				t.Fatal(err)
			}
			owned[name(n)] = cm
		}
		for i, k := range s.pods {
			pod(t, admin, name(n), fmt.Sprintf("pod-%d", i), k)
		}
	}
	var configured []string
	for _, tc := range cases {
		if tc.configured {
			configured = append(configured, name(tc.name))
		}
		if !tc.later {
			create(tc.name, tc.setup)
		}
	}

	src := newSource(r1)
	start(t, cs, src, nil, configured...)
	for _, tc := range cases {
		if tc.later {
			if tc.setup.pods != nil {
				// The namespace first, then (once the Publisher saw it
				// without them) its pods.
				pods := tc.setup.pods
				tc.setup.pods = nil
				create(tc.name, tc.setup)
				time.Sleep(100 * time.Millisecond)
				for i, k := range pods {
					pod(t, admin, name(tc.name), fmt.Sprintf("pod-%d", i), k)
				}
			} else {
				create(tc.name, tc.setup)
			}
		}
	}

	check := func(step string, roots ...*x509.Certificate) {
		t.Helper()
		for _, tc := range cases {
			if tc.want {
				eventually(t, step+": "+name(tc.name)+" has the bundle", func() error { return published(ctx, admin, name(tc.name), roots) })
			}
		}
		// Every namespace that should have it has it, and the others were
		// queued at the start or at their own events, long before: they
		// have none (or their owner's ConfigMap, untouched), and keep it
		// so.
		deadline := time.Now().Add(time.Second)
		for time.Now().Before(deadline) {
			for _, tc := range cases {
				if !tc.want {
					if err := absent(ctx, admin, name(tc.name), owned[name(tc.name)]); err != nil {
						t.Fatalf("%s: %v", step, err)
					}
				}
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	check("first root", r1)
	src.Set(r1, r2)
	check("second root added", r1, r2)
	src.Set(r2)
	check("first root removed", r2)

	// A namespace that loses its last meshed pod keeps its ConfigMap, and
	// the ConfigMap stays current.
	if err := admin.CoreV1().Pods(name("meshed-sidecar")).Delete(ctx, "pod-0", metav1.DeleteOptions{GracePeriodSeconds: new(int64)}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the meshed pod to go", func() error {
		_, err := admin.CoreV1().Pods(name("meshed-sidecar")).Get(ctx, "pod-0", metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return nil
		}
		return fmt.Errorf("still there: %v", err)
	})
	r3 := newRoot(t)
	src.Set(r2, r3)
	check("after the last meshed pod left", r2, r3)
}

// TestHandEditsArePutBack edits the ConfigMap the ways a person (or an
// attacker with ConfigMap rights) might, and checks each is undone.
func TestHandEditsArePutBack(t *testing.T) {
	c := clustertest.Get(t)
	admin, ctx := c.Client(), t.Context()
	cs := restricted(t, c)
	root, intruder := newRoot(t), newRoot(t)
	intruderPEM := string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: intruder.Raw}))

	const ns = "hand-edits"
	namespace(t, admin, ns, nil)
	pod(t, admin, ns, "web", meshedInit)
	src := newSource(root)
	p := start(t, cs, src, nil)
	eventually(t, "the bundle", func() error { return published(ctx, admin, ns, []*x509.Certificate{root}) })

	edits := []struct {
		name string
		edit func(*corev1.ConfigMap)
	}{
		{"root replaced", func(cm *corev1.ConfigMap) { cm.Data[trustbundle.Key] = intruderPEM }},
		{"root appended", func(cm *corev1.ConfigMap) { cm.Data[trustbundle.Key] += intruderPEM }},
		{"key emptied", func(cm *corev1.ConfigMap) { cm.Data[trustbundle.Key] = "" }},
		{"key removed", func(cm *corev1.ConfigMap) { delete(cm.Data, trustbundle.Key) }},
		{"second key", func(cm *corev1.ConfigMap) { cm.Data["extra.pem"] = intruderPEM }},
		{"binary key", func(cm *corev1.ConfigMap) { cm.BinaryData = map[string][]byte{"extra.der": intruder.Raw} }},
		{"label removed", func(cm *corev1.ConfigMap) { delete(cm.Labels, trustbundle.ManagedByLabel) }},
		{"label changed", func(cm *corev1.ConfigMap) { cm.Labels[trustbundle.ManagedByLabel] = "someone-else" }},
	}
	for _, e := range edits {
		t.Run(e.name, func(t *testing.T) {
			err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
				cm, err := admin.CoreV1().ConfigMaps(ns).Get(ctx, trustbundle.ConfigMapName, metav1.GetOptions{})
				if err != nil {
					return err
				}
				e.edit(cm)
				_, err = admin.CoreV1().ConfigMaps(ns).Update(ctx, cm, metav1.UpdateOptions{})
				return err
			})
			if err != nil {
				t.Fatal(err)
			}
			eventually(t, "the edit undone", func() error { return published(ctx, admin, ns, []*x509.Certificate{root}) })
		})
	}
	if n := p.writes(t, "updated"); n < float64(len(edits)) {
		t.Errorf("%v updates counted for %d edits", n, len(edits))
	}

	t.Run("deleted", func(t *testing.T) {
		if err := admin.CoreV1().ConfigMaps(ns).Delete(ctx, trustbundle.ConfigMapName, metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		eventually(t, "the ConfigMap back", func() error { return published(ctx, admin, ns, []*x509.Certificate{root}) })
	})

	// An immutable ConfigMap with the wrong root, made before the
	// namespace had a meshed pod: it cannot be updated, so it is replaced.
	t.Run("immutable", func(t *testing.T) {
		const ns = "hand-edits-immutable"
		namespace(t, admin, ns, nil)
		yes := true
		if _, err := admin.CoreV1().ConfigMaps(ns).Create(ctx, &corev1.ConfigMap{
			ObjectMeta: metav1.ObjectMeta{Name: trustbundle.ConfigMapName, Labels: map[string]string{trustbundle.ManagedByLabel: trustbundle.ManagedBy, "team": "payments"}},
			Data:       map[string]string{trustbundle.Key: intruderPEM},
			Immutable:  &yes,
		}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		eventually(t, "the immutable ConfigMap replaced", func() error { return published(ctx, admin, ns, []*x509.Certificate{root}) })
		cm, err := admin.CoreV1().ConfigMaps(ns).Get(ctx, trustbundle.ConfigMapName, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if cm.Labels["team"] != "payments" {
			t.Errorf("the replacement lost the owner's label: %v", cm.Labels)
		}
		if n := p.writes(t, "replaced"); n != 1 {
			t.Errorf("%v replacements counted, want 1", n)
		}
	})
}

// TestNoBadBundle gives the Publisher bundles it must not write, then a
// good one.
func TestNoBadBundle(t *testing.T) {
	c := clustertest.Get(t)
	admin, ctx := c.Client(), t.Context()
	cs := restricted(t, c)
	root := newRoot(t)

	const ns = "bad-bundle"
	namespace(t, admin, ns, map[string]string{trustbundle.InjectLabel: trustbundle.InjectEnabled})
	pod(t, admin, ns, "web", meshedInit)
	src := newSource()
	var log logBuffer
	p := start(t, cs, src, &log)
	refusals := func() int { return log.count("level=ERROR", "bad bundle", "namespace="+ns) }

	bad := []struct {
		name  string
		roots []*x509.Certificate
	}{
		{"no roots", nil},
		{"nil root", []*x509.Certificate{root, nil}},
		{"root without DER", []*x509.Certificate{{Subject: root.Subject}}},
	}
	for i, b := range bad {
		before := 0 // the first bundle is there from the start
		if i > 0 {
			before = refusals()
			src.Set(b.roots...)
		}
		// The namespace was looked at (at the start, then at each change)
		// and refused; nothing was written, here or in any other test's
		// namespace.
		eventually(t, b.name+": refused", func() error {
			if n := p.writes(t, "created"); n != 0 {
				t.Fatalf("%s: %v ConfigMaps created", b.name, n)
			}
			if refusals() == before {
				return errors.New("no refusal logged")
			}
			return nil
		})
		if err := absent(ctx, admin, ns, nil); err != nil {
			t.Fatalf("%s: %v", b.name, err)
		}
		if n := p.writes(t, "bad_bundle"); n < float64(i+1) {
			t.Errorf("%s: %v refusals counted", b.name, n)
		}
		for _, r := range []string{"created", "updated", "replaced"} {
			if n := p.writes(t, r); n != 0 {
				t.Fatalf("%s: %v writes %s", b.name, n, r)
			}
		}
	}

	src.Set(root)
	eventually(t, "a good bundle written", func() error { return published(ctx, admin, ns, []*x509.Certificate{root}) })
}

// TestRunAgain stops the Publisher (as when a replica loses the lease),
// changes things while none runs, and checks the next Run catches up.
func TestRunAgain(t *testing.T) {
	c := clustertest.Get(t)
	admin, ctx := c.Client(), t.Context()
	cs := restricted(t, c)
	r1, r2 := newRoot(t), newRoot(t)

	const ns = "run-again"
	namespace(t, admin, ns, nil)
	pod(t, admin, ns, "web", meshedInit)
	src := newSource(r1)
	factory := informers.NewSharedInformerFactory(cs, 0)
	p, err := trustbundle.New(trustbundle.Config{Kube: cs, Informers: factory, Bundle: src, Logger: slog.New(slog.NewTextHandler(t.Output(), nil))})
	if err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	factory.Start(stop)
	defer func() { close(stop); factory.Shutdown() }()

	run := func() (context.CancelFunc, <-chan error) {
		ctx, cancel := context.WithCancel(ctx)
		done := make(chan error, 1)
		go func() { done <- p.Run(ctx) }()
		return cancel, done
	}
	cancel, done := run()
	eventually(t, "the bundle", func() error { return published(ctx, admin, ns, []*x509.Certificate{r1}) })

	// One Run at a time.
	if err := p.Run(ctx); err == nil || err.Error() != "trustbundle: Run is already running" {
		t.Errorf("a second Run at once: %v", err)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run: %v", err)
	}

	// While nothing runs: the bundle changes and the ConfigMap is edited.
	// Neither is seen: the informers still run, but no handler is left.
	src.Set(r1, r2)
	err = retry.RetryOnConflict(retry.DefaultRetry, func() error {
		cm, err := admin.CoreV1().ConfigMaps(ns).Get(ctx, trustbundle.ConfigMapName, metav1.GetOptions{})
		if err != nil {
			return err
		}
		cm.Data["extra"] = "x"
		_, err = admin.CoreV1().ConfigMaps(ns).Update(ctx, cm, metav1.UpdateOptions{})
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(500 * time.Millisecond)
	cm, err := admin.CoreV1().ConfigMaps(ns).Get(ctx, trustbundle.ConfigMapName, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if cm.Data["extra"] != "x" {
		t.Fatalf("a stopped Publisher wrote: %v", cm.Data)
	}

	cancel, done = run()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	}()
	eventually(t, "caught up", func() error { return published(ctx, admin, ns, []*x509.Certificate{r1, r2}) })
}

// TestRunEndsWithoutInformers: a Run whose factory never starts waits for
// it, and still ends with its context.
func TestRunEndsWithoutInformers(t *testing.T) {
	c := clustertest.Get(t)
	p, err := trustbundle.New(trustbundle.Config{Kube: c.Client(), Informers: informers.NewSharedInformerFactory(c.Client(), 0), Bundle: newSource(newRoot(t))})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 200*time.Millisecond)
	defer cancel()
	if err := p.Run(ctx); err != nil {
		t.Fatalf("Run: %v", err)
	}
	if !errors.Is(ctx.Err(), context.DeadlineExceeded) {
		t.Fatal("Run returned before its context ended")
	}
}
