package policyclient_test

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/tools/cache"

	"github.com/mesh-dev/mesh/authz/api/v1alpha1"
	"github.com/mesh-dev/mesh/authz/api/v1alpha1/crdtest"
	"github.com/mesh-dev/mesh/authz/api/v1alpha1/policyclient"
	"github.com/mesh-dev/mesh/e2e/cluster"
	"github.com/mesh-dev/mesh/e2e/clustertest"
)

func TestMain(m *testing.M) { os.Exit(clustertest.Run(m)) }

// setup installs the CRD and makes namespaces, returning a client.
func setup(t *testing.T, namespaces ...string) (*cluster.Cluster, *policyclient.Client) {
	t.Helper()
	c := clustertest.Get(t)
	crdtest.Install(t, c)
	for _, ns := range namespaces {
		_, err := c.Client().CoreV1().Namespaces().Create(t.Context(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{})
		if err != nil && !apierrors.IsAlreadyExists(err) {
			t.Fatal(err)
		}
	}
	pc, err := policyclient.New(c.RESTConfig())
	if err != nil {
		t.Fatal(err)
	}
	return c, pc
}

func policy(ns, name string) *v1alpha1.AuthorizationPolicy {
	return &v1alpha1.AuthorizationPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: v1alpha1.AuthorizationPolicySpec{
			Action:   v1alpha1.Allow,
			Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "backend"}},
			Rules:    []v1alpha1.Rule{{To: []v1alpha1.Operation{{Ports: []intstr.IntOrString{intstr.FromString("http")}}}}},
		},
	}
}

func status(gen int64, enforced, selected int32, workloads ...string) v1alpha1.AuthorizationPolicyStatus {
	return v1alpha1.AuthorizationPolicyStatus{
		ObservedGeneration: gen,
		Conditions: []metav1.Condition{{
			Type: v1alpha1.ConditionAccepted, Status: metav1.ConditionTrue, Reason: v1alpha1.ReasonAccepted,
			ObservedGeneration: gen, LastTransitionTime: metav1.NewTime(time.Now().Truncate(time.Second)),
		}},
		SelectedWorkloads: selected,
		EnforcedWorkloads: enforced,
		Enforced:          fmt.Sprintf("%d/%d", enforced, selected),
		Workloads:         workloads,
	}
}

func TestNewRefusesNilConfig(t *testing.T) {
	if _, err := policyclient.New(nil); err == nil || !strings.HasPrefix(err.Error(), "policyclient: ") {
		t.Fatalf("New(nil) = %v, want a policyclient error", err)
	}
}

// TestClientStatusSubresource: the status is its own subresource, so the
// spec's writers cannot set it and the status writer cannot change the
// spec; neither write skips the other's resourceVersion check.
func TestClientStatusSubresource(t *testing.T) {
	_, pc := setup(t, "client-status")
	ctx := t.Context()

	in := policy("client-status", "backend")
	in.Status = status(7, 3, 3, "client-status/a")
	created, err := pc.Create(ctx, in)
	if err != nil {
		t.Fatal(err)
	}
	if created.Generation != 1 {
		t.Fatalf("generation = %d, want 1", created.Generation)
	}
	if created.Status.ObservedGeneration != 0 || len(created.Status.Conditions) != 0 || created.Status.Enforced != "" {
		t.Fatalf("create stored a status: %+v", created.Status)
	}

	// UpdateStatus writes the status, ignores a changed spec, and keeps
	// the generation (status is not spec).
	upd := created.DeepCopy()
	upd.Status = status(1, 1, 2, "client-status/a", "client-status/b")
	upd.Spec.Action = v1alpha1.Deny
	got, err := pc.UpdateStatus(ctx, upd)
	if err != nil {
		t.Fatal(err)
	}
	if got.Spec.Action != v1alpha1.Allow {
		t.Errorf("UpdateStatus changed the spec: action %s", got.Spec.Action)
	}
	if got.Generation != 1 {
		t.Errorf("UpdateStatus bumped the generation to %d", got.Generation)
	}
	read, err := pc.Get(ctx, "client-status", "backend")
	if err != nil {
		t.Fatal(err)
	}
	if read.Status.Enforced != "1/2" || read.Status.SelectedWorkloads != 2 || read.Status.EnforcedWorkloads != 1 ||
		read.Status.ObservedGeneration != 1 || !slices.Equal(read.Status.Workloads, []string{"client-status/a", "client-status/b"}) {
		t.Errorf("status read back = %+v", read.Status)
	}
	if c := read.Status.Conditions; len(c) != 1 || c[0].Type != v1alpha1.ConditionAccepted || c[0].Status != metav1.ConditionTrue {
		t.Errorf("conditions read back = %+v", c)
	}

	// Update writes the spec, bumps the generation, keeps the status.
	read.Spec.DryRun = true
	read.Status = v1alpha1.AuthorizationPolicyStatus{}
	got, err = pc.Update(ctx, read)
	if err != nil {
		t.Fatal(err)
	}
	if got.Generation != 2 || !got.Spec.DryRun || got.Status.Enforced != "1/2" {
		t.Errorf("after Update: generation %d, dryRun %v, status %+v", got.Generation, got.Spec.DryRun, got.Status)
	}

	// A status written at an old resourceVersion is a conflict.
	stale := upd.DeepCopy()
	stale.Status = status(2, 2, 2)
	if _, err := pc.UpdateStatus(ctx, stale); !apierrors.IsConflict(err) {
		t.Errorf("stale UpdateStatus = %v, want a conflict", err)
	}
}

// TestClientErrors: the API server's refusals come back wrapped with what
// was asked, and still classify with apierrors.
func TestClientErrors(t *testing.T) {
	_, pc := setup(t, "client-errors")
	ctx := t.Context()
	if _, err := pc.Create(ctx, policy("client-errors", "p")); err != nil {
		t.Fatal(err)
	}
	cur, err := pc.Get(ctx, "client-errors", "p")
	if err != nil {
		t.Fatal(err)
	}
	many := make([]string, v1alpha1.MaxStatusWorkloads+1)
	for i := range many {
		many[i] = fmt.Sprintf("client-errors/pod-%02d", i)
	}
	tests := []struct {
		name string
		do   func() error
		is   func(error) bool
		want string
	}{
		{"get missing", func() error { _, err := pc.Get(ctx, "client-errors", "nope"); return err },
			apierrors.IsNotFound, "policyclient: get authorizationpolicies client-errors/nope: "},
		{"status of missing", func() error {
			p := policy("client-errors", "nope")
			_, err := pc.UpdateStatus(ctx, p)
			return err
		}, apierrors.IsNotFound, "policyclient: update status of authorizationpolicies client-errors/nope: "},
		{"create twice", func() error { _, err := pc.Create(ctx, policy("client-errors", "p")); return err },
			apierrors.IsAlreadyExists, "policyclient: create authorizationpolicies client-errors/p: "},
		{"too many workloads", func() error {
			p := cur.DeepCopy()
			p.Status = status(1, 0, int32(len(many)), many...)
			_, err := pc.UpdateStatus(ctx, p)
			return err
		}, apierrors.IsInvalid, "status.workloads: Too many"},
		{"bad condition status", func() error {
			p := cur.DeepCopy()
			p.Status = status(1, 0, 0)
			p.Status.Conditions[0].Status = "Maybe"
			_, err := pc.UpdateStatus(ctx, p)
			return err
		}, apierrors.IsInvalid, "status.conditions[0].status: Unsupported value"},
		{"duplicate condition type", func() error {
			p := cur.DeepCopy()
			p.Status = status(1, 0, 0)
			p.Status.Conditions = append(p.Status.Conditions, p.Status.Conditions[0])
			_, err := pc.UpdateStatus(ctx, p)
			return err
		}, apierrors.IsInvalid, "Duplicate value"},
		{"delete missing", func() error { return pc.Delete(ctx, "client-errors", "nope") },
			apierrors.IsNotFound, "policyclient: delete authorizationpolicies client-errors/nope: "},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.do()
			if err == nil || !tt.is(err) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error = %v, want one containing %q of the right kind", err, tt.want)
			}
		})
	}
}

// TestClientListWatch: List and Watch see one namespace or all of them.
func TestClientListWatch(t *testing.T) {
	_, pc := setup(t, "client-list-a", "client-list-b")
	ctx := t.Context()
	all, err := pc.List(ctx, metav1.NamespaceAll, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	w, err := pc.Watch(ctx, "client-list-b", metav1.ListOptions{ResourceVersion: all.ResourceVersion})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Stop()
	for _, ns := range []string{"client-list-a", "client-list-b"} {
		for _, name := range []string{"x", "y"} {
			if _, err := pc.Create(ctx, policy(ns, name)); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := pc.Delete(ctx, "client-list-b", "x"); err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		ns   string
		want []string
	}{
		{"client-list-a", []string{"client-list-a/x", "client-list-a/y"}},
		{"client-list-b", []string{"client-list-b/y"}},
		{"client-list-none", nil},
	}
	for _, tt := range tests {
		l, err := pc.List(ctx, tt.ns, metav1.ListOptions{})
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, p := range l.Items {
			got = append(got, p.Namespace+"/"+p.Name)
		}
		slices.Sort(got)
		if !slices.Equal(got, tt.want) {
			t.Errorf("List(%q) = %v, want %v", tt.ns, got, tt.want)
		}
	}
	l, err := pc.List(ctx, metav1.NamespaceAll, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	found := 0
	for _, p := range l.Items {
		if strings.HasPrefix(p.Namespace, "client-list-") {
			found++
		}
	}
	if found != 3 {
		t.Errorf("List(all) found %d of the 3 policies", found)
	}

	// The watch of client-list-b sees its two creations and one deletion,
	// and nothing of client-list-a.
	want := []string{"ADDED client-list-b/x", "ADDED client-list-b/y", "DELETED client-list-b/x"}
	var got []string
	timeout := time.After(30 * time.Second)
	for len(got) < len(want) {
		select {
		case ev, ok := <-w.ResultChan():
			if !ok {
				t.Fatalf("watch closed after %v", got)
			}
			p, ok := ev.Object.(*v1alpha1.AuthorizationPolicy)
			if !ok {
				t.Fatalf("watch event %s carries %T", ev.Type, ev.Object)
			}
			got = append(got, fmt.Sprintf("%s %s/%s", ev.Type, p.Namespace, p.Name))
		case <-timeout:
			t.Fatalf("watch saw %v, want %v", got, want)
		}
	}
	if !slices.Equal(got, want) {
		t.Errorf("watch saw %v, want %v", got, want)
	}
}

// TestInformer: the informer lists every namespace's policies, indexes them
// by namespace, and follows status writes.
func TestInformer(t *testing.T) {
	_, pc := setup(t, "informer-a", "informer-b")
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	if _, err := pc.Create(ctx, policy("informer-a", "before")); err != nil {
		t.Fatal(err)
	}
	inf := policyclient.NewInformer(pc, 0)
	done := make(chan struct{})
	go func() { defer close(done); inf.RunWithContext(ctx) }()
	defer func() { cancel(); <-done }()
	if !cache.WaitForCacheSync(ctx.Done(), inf.HasSynced) {
		t.Fatal("informer never synced")
	}
	after, err := pc.Create(ctx, policy("informer-b", "after"))
	if err != nil {
		t.Fatal(err)
	}
	after.Status = status(1, 1, 1, "informer-b/pod")
	if _, err := pc.UpdateStatus(ctx, after); err != nil {
		t.Fatal(err)
	}

	byNS := func(ns string) []string {
		objs, err := inf.GetIndexer().ByIndex(cache.NamespaceIndex, ns)
		if err != nil {
			t.Fatal(err)
		}
		var names []string
		for _, o := range objs {
			p := o.(*v1alpha1.AuthorizationPolicy)
			names = append(names, p.Name+"="+p.Status.Enforced)
		}
		slices.Sort(names)
		return names
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		a, b := byNS("informer-a"), byNS("informer-b")
		if slices.Equal(a, []string{"before="}) && slices.Equal(b, []string{"after=1/1"}) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("informer index: informer-a %v, informer-b %v", a, b)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestPrinterColumns: kubectl get shows whether the policy is accepted
// and how many proxies enforce it; -o wide adds the observed generation.
func TestPrinterColumns(t *testing.T) {
	c, pc := setup(t, "columns")
	ctx := t.Context()
	// Dry-run, so no column is empty (kubectl prints an omitted false as
	// nothing, which would shift the fields compared below).
	in := policy("columns", "web")
	in.Spec.DryRun = true
	p, err := pc.Create(ctx, in)
	if err != nil {
		t.Fatal(err)
	}
	p.Status = status(1, 3, 4)
	if _, err := pc.UpdateStatus(ctx, p); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		args []string
		want []string
	}{
		{[]string{"-n", "columns", "get", "authorizationpolicies"},
			[]string{"NAME ACTION DRY-RUN ACCEPTED ENFORCED AGE", "web ALLOW true True 3/4 "}},
		{[]string{"-n", "columns", "get", "ap", "-o", "wide"},
			[]string{"NAME ACTION DRY-RUN ACCEPTED ENFORCED OBSERVED AGE", "web ALLOW true True 3/4 1 "}},
	}
	for _, tt := range tests {
		out, err := crdtest.Kubectl(t, c, "", tt.args...)
		if err != nil {
			t.Fatalf("kubectl %v: %v\n%s", tt.args, err, out)
		}
		lines := strings.Split(strings.TrimSpace(out), "\n")
		if len(lines) != 2 {
			t.Fatalf("kubectl %v printed %d lines:\n%s", tt.args, len(lines), out)
		}
		for i, l := range lines {
			got := strings.Join(strings.Fields(l), " ")
			if !strings.HasPrefix(got+" ", tt.want[i]) {
				t.Errorf("kubectl %v line %d = %q, want it to start %q", tt.args, i, got, tt.want[i])
			}
		}
	}
}
