package controlplane_test

import (
	"context"
	"crypto/tls"
	"net"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/mesh-dev/mesh/authz/api/v1alpha1"
	"github.com/mesh-dev/mesh/controlplane"
	controlplanev1 "github.com/mesh-dev/mesh/controlplane/api/v1"
	"github.com/mesh-dev/mesh/controlplane/inventory"
	"github.com/mesh-dev/mesh/internal/policyinformer"
	"github.com/mesh-dev/mesh/internal/testpki"
)

// harness is a controller's control-plane server on loopback with real
// mTLS, over an inventory fed by a fake clientset (this tests the
// server's own checks; the e2e tests run it against the real API server).
type harness struct {
	pki      *testpki.PKI
	kube     *fake.Clientset
	policies *watch.FakeWatcher
	addr     string
	srv      *controlplane.Server
}

func meshedPod(ns, name, sa, ip string, labels map[string]string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: labels},
		Spec: corev1.PodSpec{NodeName: "n", ServiceAccountName: sa,
			InitContainers: []corev1.Container{{Name: inventory.ProxyContainer}}, Containers: []corev1.Container{{Name: "app"}}},
		Status: corev1.PodStatus{Phase: corev1.PodRunning, PodIP: ip, PodIPs: []corev1.PodIP{{IP: ip}}},
	}
}

func newHarness(t *testing.T, anyAddress bool, objs ...runtime.Object) *harness {
	t.Helper()
	h := &harness{pki: testpki.New(t, "cluster.local"), kube: fake.NewClientset(objs...), policies: watch.NewFake()}
	factory := informers.NewSharedInformerFactory(h.kube, 0)
	pinf := policyinformer.New(func() *v1alpha1.AuthorizationPolicyList { return &v1alpha1.AuthorizationPolicyList{} },
		func() watch.Interface { return h.policies })
	inv, err := inventory.New(inventory.Config{TrustDomain: h.pki.TD, Informers: factory, Policies: pinf})
	if err != nil {
		t.Fatal(err)
	}
	h.srv, err = controlplane.New(controlplane.Config{Inventory: inv, Bundle: h.pki.CA, TrustDomain: h.pki.TD, AllowAnyAddress: anyAddress})
	if err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	t.Cleanup(func() { close(stop) })
	factory.Start(stop)
	go pinf.Run(stop)
	for !inv.HasSynced() {
		time.Sleep(10 * time.Millisecond)
	}
	ctlSVID := h.pki.Source(t, "spiffe://cluster.local/ns/mesh-system/sa/mesh-controller")
	gs := grpc.NewServer(grpc.Creds(credentials.NewTLS(controlplane.ServerTLS(ctlSVID, h.pki.Bundle()))))
	h.srv.Register(gs)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	h.addr = lis.Addr().String()
	go gs.Serve(lis)
	t.Cleanup(gs.Stop)
	return h
}

// client dials the server as id (or with no certificate when id is "").
func (h *harness) client(t *testing.T, pki *testpki.PKI, id string) controlplanev1.ControlPlaneClient {
	t.Helper()
	ctlID := spiffeid.RequireFromString("spiffe://cluster.local/ns/mesh-system/sa/mesh-controller")
	var cfg *tls.Config
	if id == "" {
		cfg = tlsconfig.TLSClientConfig(h.pki.Bundle(), tlsconfig.AuthorizeID(ctlID))
	} else {
		cfg = tlsconfig.MTLSClientConfig(pki.Source(t, id), h.pki.Bundle(), tlsconfig.AuthorizeID(ctlID))
	}
	conn, err := grpc.NewClient(h.addr, grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return controlplanev1.NewControlPlaneClient(conn)
}

func firstDestinations(ctx context.Context, c controlplanev1.ControlPlaneClient, ns, pod string) (*controlplanev1.Destinations, error) {
	s, err := c.WatchDestinations(ctx, &controlplanev1.WatchRequest{Namespace: ns, Pod: pod})
	if err != nil {
		return nil, err
	}
	return s.Recv()
}

// TestCallerMustBeItsOwnPod: the server answers a proxy only about its own
// pod: the SVID's namespace and ServiceAccount must be the pod's, and the
// pod must be live at the caller's address.
func TestCallerMustBeItsOwnPod(t *testing.T) {
	web := meshedPod("shop", "web-0", "web", "127.0.0.1", nil)
	db := meshedPod("shop", "db-0", "db", "127.0.0.1", nil)
	elsewhere := meshedPod("shop", "web-far", "web", "198.18.0.50", nil)
	done := meshedPod("shop", "web-done", "web", "127.0.0.1", nil)
	done.Status.Phase = corev1.PodSucceeded
	h := newHarness(t, false, web, db, elsewhere, done)
	other := testpki.New(t, "cluster.local") // another CA, same trust domain
	for _, tc := range []struct {
		name, id, ns, pod string
		pki               *testpki.PKI
		want              codes.Code
	}{
		{"own pod", "spiffe://cluster.local/ns/shop/sa/web", "shop", "web-0", h.pki, codes.OK},
		{"no certificate", "", "shop", "web-0", h.pki, codes.Unauthenticated},
		{"another pod's ServiceAccount", "spiffe://cluster.local/ns/shop/sa/web", "shop", "db-0", h.pki, codes.PermissionDenied},
		{"another namespace", "spiffe://cluster.local/ns/shop/sa/web", "bank", "web-0", h.pki, codes.PermissionDenied},
		{"not a ServiceAccount ID", "spiffe://cluster.local/web", "shop", "web-0", h.pki, codes.PermissionDenied},
		{"pod at another address", "spiffe://cluster.local/ns/shop/sa/web", "shop", "web-far", h.pki, codes.PermissionDenied},
		{"finished pod", "spiffe://cluster.local/ns/shop/sa/web", "shop", "web-done", h.pki, codes.PermissionDenied},
		{"unknown pod", "spiffe://cluster.local/ns/shop/sa/web", "shop", "web-9", h.pki, codes.NotFound},
		{"no pod named", "spiffe://cluster.local/ns/shop/sa/web", "shop", "", h.pki, codes.InvalidArgument},
		{"SVID of another CA", "spiffe://cluster.local/ns/shop/sa/web", "shop", "web-0", other, codes.Unavailable},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
			defer cancel()
			c := h.client(t, tc.pki, tc.id)
			_, err := firstDestinations(ctx, c, tc.ns, tc.pod)
			if got := status.Code(err); got != tc.want {
				t.Fatalf("WatchDestinations: %v, want code %s", err, tc.want)
			}
			_, err = c.AckPolicy(ctx, &controlplanev1.PolicyAck{Namespace: tc.ns, Pod: tc.pod, Version: "x"})
			if got := status.Code(err); got != tc.want {
				t.Fatalf("AckPolicy: %v, want code %s", err, tc.want)
			}
		})
	}
}

// TestDestinationsSnapshotThenChanges: the first message is the whole
// mesh; a pod created later is pushed as an upsert and, deleted, as a
// remove; unmeshed pods are never listed (unknown means not meshed).
func TestDestinationsSnapshotThenChanges(t *testing.T) {
	web := meshedPod("shop", "web-0", "web", "127.0.0.1", nil)
	plain := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "plain"}, Spec: corev1.PodSpec{NodeName: "n"},
		Status: corev1.PodStatus{Phase: corev1.PodRunning, PodIP: "198.18.0.30"}}
	h := newHarness(t, true, web, plain)
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	s, err := h.client(t, h.pki, "spiffe://cluster.local/ns/shop/sa/web").WatchDestinations(ctx, &controlplanev1.WatchRequest{Namespace: "shop", Pod: "web-0"})
	if err != nil {
		t.Fatal(err)
	}
	first, err := s.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if !first.Snapshot || len(first.Upserts) != 1 || first.Upserts[0].Address != "127.0.0.1" || first.Upserts[0].Identity != "spiffe://cluster.local/ns/shop/sa/web" {
		t.Fatalf("snapshot = %v, want only web-0 (plain is not meshed)", first)
	}
	db := meshedPod("shop", "db-0", "db", "198.18.0.40", nil)
	if _, err := h.kube.CoreV1().Pods("shop").Create(ctx, db, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	msg, err := s.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if msg.Snapshot || len(msg.Upserts) != 1 || msg.Upserts[0].Identity != "spiffe://cluster.local/ns/shop/sa/db" || msg.Upserts[0].Address != "198.18.0.40" {
		t.Fatalf("after a pod was created: %v", msg)
	}
	if err := h.kube.CoreV1().Pods("shop").Delete(ctx, "db-0", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	msg, err = s.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if len(msg.Removes) != 1 || msg.Removes[0] != "198.18.0.40" {
		t.Fatalf("after the pod was deleted: %v", msg)
	}
}

// TestPolicyPushAckAndEnforcement: a policy change pushes a new version
// to the pods it selects only; an ack of it counts the pod as enforcing
// the policy's generation.
func TestPolicyPushAckAndEnforcement(t *testing.T) {
	web := meshedPod("shop", "web-0", "web", "127.0.0.1", map[string]string{"app": "web"})
	db := meshedPod("shop", "db-0", "db", "127.0.0.2", map[string]string{"app": "db"})
	h := newHarness(t, true, web, db)
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	watchPolicy := func(id, pod string) grpc.ServerStreamingClient[controlplanev1.Policy] {
		s, err := h.client(t, h.pki, id).WatchPolicy(ctx, &controlplanev1.WatchRequest{Namespace: "shop", Pod: pod})
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	webStream := watchPolicy("spiffe://cluster.local/ns/shop/sa/web", "web-0")
	dbStream := watchPolicy("spiffe://cluster.local/ns/shop/sa/db", "db-0")
	first, err := webStream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := dbStream.Recv(); err != nil {
		t.Fatal(err)
	}
	if first.DefaultMode != "allow-mesh" || len(first.Policies) != 0 {
		t.Fatalf("first policy = %v", first)
	}
	p := &v1alpha1.AuthorizationPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "web", Generation: 3},
		Spec: v1alpha1.AuthorizationPolicySpec{Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "web"}}, Action: v1alpha1.Allow,
			Rules: []v1alpha1.Rule{{From: []v1alpha1.Source{{Namespaces: []string{"shop"}}}}}},
	}
	h.policies.Add(p)
	next, err := webStream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if len(next.Applied) != 1 || next.Applied[0].Name != "web" || next.Applied[0].Generation != 3 || next.Version == first.Version {
		t.Fatalf("after the policy was added: %v", next)
	}
	// db-0 is not selected: nothing is pushed to it.
	got := make(chan error, 1)
	go func() { _, err := dbStream.Recv(); got <- err }()
	select {
	case err := <-got:
		t.Fatalf("db-0, which the policy does not select, got a push (%v)", err)
	case <-time.After(300 * time.Millisecond):
	}
	if n := h.srv.Enforcement()["shop/web"][3]; n != 0 {
		t.Fatalf("enforcement before the ack = %d", n)
	}
	changed := h.srv.EnforcementChanged()
	c := h.client(t, h.pki, "spiffe://cluster.local/ns/shop/sa/web")
	if _, err := c.AckPolicy(ctx, &controlplanev1.PolicyAck{Namespace: "shop", Pod: "web-0", Version: next.Version}); err != nil {
		t.Fatal(err)
	}
	<-changed
	if n := h.srv.Enforcement()["shop/web"][3]; n != 1 {
		t.Fatalf("enforcement after the ack = %d, want 1", n)
	}
	// An ack of a version never sent counts for nothing.
	if _, err := c.AckPolicy(ctx, &controlplanev1.PolicyAck{Namespace: "shop", Pod: "web-0", Version: "forged"}); err != nil {
		t.Fatal(err)
	}
	if n := h.srv.Enforcement()["shop/web"][3]; n != 1 {
		t.Fatalf("enforcement after a forged ack = %d, want 1", n)
	}
}
