package castatus_test

import (
	"context"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/mesh-dev/mesh/ca"
	"github.com/mesh-dev/mesh/controlplane/castatus"
)

const ns = "mesh-system"

// A narrow test of the request protocol on a fake clientset; e2e/operate
// drives it through meshctl on the real API server, under traffic.
func TestPublisherTakesEachRequestOnce(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	store := &ca.MemoryStore{}
	authority, err := ca.New(ctx, ca.Config{TrustDomain: spiffeid.RequireTrustDomainFromString("cluster.local"), Store: store, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	kube := fake.NewClientset()
	factory := informers.NewSharedInformerFactory(kube, 0)
	p, err := castatus.New(castatus.Config{Kube: kube, Informers: factory, CA: authority, Namespace: ns, Replica: "r1", Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	factory.Start(ctx.Done())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}()

	// The leader publishes the status unasked.
	var d *castatus.Document
	for d == nil {
		if d, err = castatus.Get(ctx, kube, ns); err != nil && ctx.Err() != nil {
			t.Fatal(err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	active, ok := d.Root(ca.RoleActive)
	if !ok || len(d.Roots) != 1 || d.Issuer.Root != active.Fingerprint || d.Replica != "r1" || d.External {
		t.Fatalf("first status: %+v", d)
	}

	// A step is taken, and its outcome published under its id.
	saves := store.Saves()
	id, err := castatus.Submit(ctx, kube, ns, castatus.PrepareRoot)
	if err != nil {
		t.Fatal(err)
	}
	if d, err = castatus.Await(ctx, kube, ns, id); err != nil {
		t.Fatal(err)
	}
	prepared, ok := d.Root(ca.RolePrepared)
	if !ok || len(d.Roots) != 2 || store.Saves() != saves+1 {
		t.Fatalf("after prepare-root: %+v, %d saves (was %d)", d.Roots, store.Saves(), saves)
	}
	// The request stays on the ConfigMap; later syncs (a resync, another
	// annotation) must not take it again: a second prepare would be refused.
	cm, err := kube.CoreV1().ConfigMaps(ns).Get(ctx, castatus.ConfigMapName, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	cm.Labels = map[string]string{"touched": "yes"}
	if _, err := kube.CoreV1().ConfigMaps(ns).Update(ctx, cm, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond)
	if d, err = castatus.Get(ctx, kube, ns); err != nil || d.LastRequest.ID != id || d.LastRequest.Error != "" || store.Saves() != saves+1 {
		t.Fatalf("the request was taken again: %+v, %d saves", d.LastRequest, store.Saves())
	}

	// A step the CA refuses is answered with its reason, and changes nothing.
	id, err = castatus.Submit(ctx, kube, ns, castatus.RetireRoot)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := castatus.Await(ctx, kube, ns, id); err == nil || !strings.Contains(err.Error(), "no root is being retired") {
		t.Fatalf("retire-root before activate-root: %v", err)
	}
	if store.Saves() != saves+1 {
		t.Fatal("a refused step wrote the CA")
	}

	// Activation: the prepared root becomes active, the old one retires.
	if id, err = castatus.Submit(ctx, kube, ns, castatus.ActivateRoot); err != nil {
		t.Fatal(err)
	}
	if d, err = castatus.Await(ctx, kube, ns, id); err != nil {
		t.Fatal(err)
	}
	if a, _ := d.Root(ca.RoleActive); a.Fingerprint != prepared.Fingerprint || d.Issuer.Root != prepared.Fingerprint || d.RetireAfter.IsZero() {
		t.Fatalf("after activate-root: %+v", d)
	}
	if r, _ := d.Root(ca.RoleRetiring); r.Fingerprint != active.Fingerprint {
		t.Fatalf("the old root is not retiring: %+v", d.Roots)
	}

	// The issuer alone.
	old := d.Issuer.Fingerprint
	if id, err = castatus.Submit(ctx, kube, ns, castatus.RotateIssuer); err != nil {
		t.Fatal(err)
	}
	if d, err = castatus.Await(ctx, kube, ns, id); err != nil {
		t.Fatal(err)
	}
	if d.Issuer.Fingerprint == old || d.Issuer.Root != prepared.Fingerprint {
		t.Fatalf("after rotate-issuer: %+v", d.Issuer)
	}
}

// An annotation that is not a request is answered once with what is wrong.
func TestPublisherAnswersBadRequests(t *testing.T) {
	for _, tc := range []struct{ raw, want string }{
		{`not json`, "not a request"},
		{`{"id":"x","step":"delete-everything"}`, `unknown step "delete-everything"`},
		{`{"step":"prepare-root"}`, "no id"},
	} {
		t.Run(tc.raw, func(t *testing.T) {
			if _, err := castatus.ParseRequest(tc.raw); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("ParseRequest(%q) = %v, want %q", tc.raw, err, tc.want)
			}
		})
	}
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	authority, err := ca.New(ctx, ca.Config{TrustDomain: spiffeid.RequireTrustDomainFromString("cluster.local"), Store: &ca.MemoryStore{}, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	kube := fake.NewClientset(&corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: castatus.ConfigMapName, Namespace: ns, Annotations: map[string]string{castatus.RequestAnnotation: `{"id":"1","step":"shred"}`}}})
	factory := informers.NewSharedInformerFactory(kube, 0)
	p, err := castatus.New(castatus.Config{Kube: kube, Informers: factory, CA: authority, Namespace: ns, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	factory.Start(ctx.Done())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	defer func() { cancel(); <-done }()
	for {
		d, err := castatus.Get(ctx, kube, ns)
		if err == nil && d.LastRequest != nil {
			if !strings.Contains(d.LastRequest.Error, `unknown step "shred"`) || len(d.Roots) != 1 ||
				!strings.HasPrefix(d.LastRequest.ID, "invalid:") || len(d.LastRequest.ID) != len("invalid:")+16 {
				t.Fatalf("bad request answered %+v", d.LastRequest)
			}
			return
		}
		if ctx.Err() != nil {
			t.Fatal("the bad request was never answered")
		}
		time.Sleep(20 * time.Millisecond)
	}
}
