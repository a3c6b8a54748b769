package inventory_test

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/mesh-dev/mesh/authz"
	"github.com/mesh-dev/mesh/authz/api/v1alpha1"
	"github.com/mesh-dev/mesh/controlplane/inventory"
	"github.com/mesh-dev/mesh/internal/policyinformer"
)

// newInventory is an inventory over a fake clientset and a fixed list of
// policies: a unit test of the compilation, not of the informers.
func newInventory(t *testing.T, policies []v1alpha1.AuthorizationPolicy, objs ...runtime.Object) *inventory.Inventory {
	t.Helper()
	return startInventory(t, fake.NewClientset(objs...), false, policies)
}

// startInventory starts an inventory over cs and a fixed list of policies,
// and waits for it to sync.
func startInventory(t *testing.T, cs *fake.Clientset, policiesOnly bool, policies []v1alpha1.AuthorizationPolicy) *inventory.Inventory {
	t.Helper()
	factory := informers.NewSharedInformerFactory(cs, 0)
	pinf := policyinformer.Static(policies)
	inv, err := inventory.New(inventory.Config{TrustDomain: spiffeid.RequireTrustDomainFromString("cluster.local"), Informers: factory, Policies: pinf, PoliciesOnly: policiesOnly})
	if err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	t.Cleanup(func() { close(stop) })
	factory.Start(stop)
	go pinf.Run(stop)
	deadline := time.Now().Add(10 * time.Second)
	for !inv.HasSynced() {
		if time.Now().After(deadline) {
			t.Fatal("informers did not sync")
		}
		time.Sleep(10 * time.Millisecond)
	}
	return inv
}

func pod(labels map[string]string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "web-0", Labels: labels},
		Spec: corev1.PodSpec{NodeName: "n", ServiceAccountName: "web",
			InitContainers: []corev1.Container{{Name: inventory.ProxyContainer}},
			Containers:     []corev1.Container{{Name: "app", Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}}}}},
		Status: corev1.PodStatus{Phase: corev1.PodRunning, PodIP: "198.18.0.20"},
	}
}

func policy(ns, name string, action v1alpha1.Action, sel map[string]string, ports ...intstr.IntOrString) v1alpha1.AuthorizationPolicy {
	p := v1alpha1.AuthorizationPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Generation: 2},
		Spec: v1alpha1.AuthorizationPolicySpec{Action: action, Rules: []v1alpha1.Rule{{
			From: []v1alpha1.Source{{Namespaces: []string{"shop"}}}}}}}
	if len(ports) > 0 {
		p.Spec.Rules[0].To = []v1alpha1.Operation{{Ports: ports}}
	}
	if sel != nil {
		p.Spec.Selector = &metav1.LabelSelector{MatchLabels: sel}
	}
	return p
}

func TestPolicy(t *testing.T) {
	web := map[string]string{"app": "web"}
	badPath := policy("shop", "bad-allow", v1alpha1.Allow, web)
	badPath.Spec.Rules[0].To = []v1alpha1.Operation{{Paths: []string{"/a//b"}}} // not normalised: Validate refuses it
	badDeny := policy("shop", "bad-deny", v1alpha1.Deny, web)
	badDeny.Spec.Rules[0].To = []v1alpha1.Operation{{Paths: []string{"/a//b"}}}
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "shop", Annotations: map[string]string{authz.DefaultPolicyAnnotation: "deny"}}}
	for _, tc := range []struct {
		name     string
		policies []v1alpha1.AuthorizationPolicy
		wantErr  error
		applied  []string
		warning  string
	}{
		{name: "selected, root namespace, not selected", policies: []v1alpha1.AuthorizationPolicy{
			policy("shop", "web", v1alpha1.Allow, web), policy(authz.RootNamespace, "mesh-wide", v1alpha1.Allow, nil),
			policy("shop", "db", v1alpha1.Allow, map[string]string{"app": "db"}), policy("bank", "other-ns", v1alpha1.Allow, nil),
		}, applied: []string{"mesh-system/mesh-wide", "shop/web"}},
		{name: "an invalid ALLOW is left out, with a warning", policies: []v1alpha1.AuthorizationPolicy{badPath, policy("shop", "web", v1alpha1.Allow, web)},
			applied: []string{"shop/web"}, warning: "policy shop/bad-allow is invalid and not enforced"},
		{name: "an invalid enforced DENY stops the compile", policies: []v1alpha1.AuthorizationPolicy{badDeny, policy("shop", "web", v1alpha1.Allow, web)},
			wantErr: inventory.ErrInvalidDeny},
		{name: "an unknown port name is kept and warned of", policies: []v1alpha1.AuthorizationPolicy{policy("shop", "web", v1alpha1.Allow, web, intstr.FromString("grpc"))},
			applied: []string{"shop/web"}, warning: "grpc"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			inv := newInventory(t, tc.policies, pod(web), ns)
			got, err := inv.Policy("shop", "web-0")
			if tc.wantErr != nil {
				if !errors.Is(err, tc.wantErr) {
					t.Fatalf("err = %v, want %v", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got.DefaultMode != "deny" {
				t.Errorf("default = %q, want the namespace annotation's deny", got.DefaultMode)
			}
			var names []string
			for _, r := range got.Applied {
				names = append(names, r.Namespace+"/"+r.Name)
				if r.Generation != 2 {
					t.Errorf("%s generation = %d, want 2", r.Name, r.Generation)
				}
			}
			if strings.Join(names, ",") != strings.Join(tc.applied, ",") {
				t.Errorf("applied = %v, want %v", names, tc.applied)
			}
			if tc.warning != "" && !strings.Contains(strings.Join(got.Warnings, "\n"), tc.warning) {
				t.Errorf("warnings %q lack %q", got.Warnings, tc.warning)
			}
			for _, b := range got.Policies {
				var p v1alpha1.AuthorizationPolicy
				if err := json.Unmarshal(b, &p); err != nil {
					t.Fatal(err)
				}
				if p.Spec.Selector != nil {
					t.Errorf("%s sent with its selector", p.Name)
				}
			}
			again, _ := inv.Policy("shop", "web-0")
			if again.Version != got.Version {
				t.Errorf("the same input gave versions %s and %s", got.Version, again.Version)
			}
		})
	}
}

// TestNamedPortsResolved: a rule naming the pod's container port reaches
// the proxy as its number.
func TestNamedPortsResolved(t *testing.T) {
	web := map[string]string{"app": "web"}
	inv := newInventory(t, []v1alpha1.AuthorizationPolicy{policy("shop", "web", v1alpha1.Allow, web, intstr.FromString("http"))}, pod(web))
	got, err := inv.Policy("shop", "web-0")
	if err != nil {
		t.Fatal(err)
	}
	var p v1alpha1.AuthorizationPolicy
	if err := json.Unmarshal(got.Policies[0], &p); err != nil {
		t.Fatal(err)
	}
	if port := p.Spec.Rules[0].To[0].Ports[0]; port.Type != intstr.Int || port.IntVal != 8080 {
		t.Fatalf("port = %v, want 8080", port)
	}
	if got.DefaultMode != "allow-mesh" {
		t.Fatalf("default = %q with no namespace annotation, want allow-mesh", got.DefaultMode)
	}
}

// TestPoliciesOnly: an inventory for policies alone lists no Services or
// EndpointSlices (meshctl needs no right to), computes no destinations,
// and gives each pod the very policy the full inventory gives it.
func TestPoliciesOnly(t *testing.T) {
	svc := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "web"},
		Spec: corev1.ServiceSpec{ClusterIP: "198.18.192.20", Selector: map[string]string{"app": "web"}, Ports: []corev1.ServicePort{{Port: 80}}}}
	policies := []v1alpha1.AuthorizationPolicy{policy("shop", "web", v1alpha1.Allow, map[string]string{"app": "web"}, intstr.FromString("http"))}
	objs := []runtime.Object{pod(map[string]string{"app": "web"}), svc}
	full := startInventory(t, fake.NewClientset(objs...), false, policies)
	cs := fake.NewClientset(objs...)
	only := startInventory(t, cs, true, policies)

	for _, a := range cs.Actions() {
		if r := a.GetResource().Resource; r == "services" || r == "endpointslices" {
			t.Errorf("a policies-only inventory asked for %s: %s", r, a.GetVerb())
		}
	}
	if d := only.Destinations(); len(d) != 0 {
		t.Errorf("a policies-only inventory computed %d destinations", len(d))
	}
	if len(full.Destinations()) == 0 {
		t.Fatal("the full inventory computed no destinations: the fixture proves nothing")
	}
	want, err := full.Policy("shop", "web-0")
	if err != nil {
		t.Fatal(err)
	}
	got, err := only.Policy("shop", "web-0")
	if err != nil {
		t.Fatal(err)
	}
	if got.Version != want.Version || len(got.Applied) != 1 {
		t.Errorf("policies-only: version %s, applied %v; the full inventory's: %s, %v", got.Version, got.Applied, want.Version, want.Applied)
	}
}
