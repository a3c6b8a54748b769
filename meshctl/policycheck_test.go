package meshctl

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/mesh-dev/mesh/authz"
	"github.com/mesh-dev/mesh/authz/api/v1alpha1"
	"github.com/mesh-dev/mesh/controlplane/inventory"
	"github.com/mesh-dev/mesh/internal/policyinformer"
	"github.com/mesh-dev/mesh/proxy"
)

func testPod(ns, name, sa string, meshed bool, labels map[string]string) *corev1.Pod {
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: labels},
		Spec: corev1.PodSpec{NodeName: "n", ServiceAccountName: sa,
			Containers: []corev1.Container{{Name: "app", Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}, {Name: "metrics", ContainerPort: 9090}}}}},
		Status: corev1.PodStatus{Phase: corev1.PodRunning, PodIP: "198.18.0.20"},
	}
	if meshed {
		p.Spec.InitContainers = []corev1.Container{{Name: inventory.ProxyContainer}}
	}
	return p
}

func testPolicy(ns, name string, action v1alpha1.Action, sel map[string]string, rules ...v1alpha1.Rule) v1alpha1.AuthorizationPolicy {
	p := v1alpha1.AuthorizationPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Generation: 1},
		Spec: v1alpha1.AuthorizationPolicySpec{Action: action, Rules: rules}}
	if sel != nil {
		p.Spec.Selector = &metav1.LabelSelector{MatchLabels: sel}
	}
	return p
}

func fromSA(ns, sa string) []v1alpha1.Source {
	return []v1alpha1.Source{{Identities: []string{"spiffe://cluster.local/ns/" + ns + "/sa/" + sa}}}
}

// TestDecide runs the evaluation core on real policies: the controller's
// inventory compiles them, the proxy's evaluator decides.
func TestDecide(t *testing.T) {
	backend := map[string]string{"app": "backend"}
	allowFrontend := testPolicy("shop", "backend-from-frontend", v1alpha1.Allow, backend,
		v1alpha1.Rule{From: fromSA("shop", "metrics-scraper")},
		v1alpha1.Rule{From: fromSA("shop", "frontend")})
	denyAdmin := testPolicy("shop", "no-admin", v1alpha1.Deny, backend,
		v1alpha1.Rule{To: []v1alpha1.Operation{{Paths: []string{"/admin*"}}}})
	namedPort := testPolicy("shop", "http-only", v1alpha1.Allow, backend,
		v1alpha1.Rule{From: fromSA("shop", "frontend"), To: []v1alpha1.Operation{{Ports: []intstr.IntOrString{intstr.FromString("http")}}}})
	rootDeny := testPolicy(authz.RootNamespace, "no-legacy", v1alpha1.Deny, nil,
		v1alpha1.Rule{From: fromSA("legacy", "default")})
	otherNS := testPolicy("web", "unrelated", v1alpha1.Deny, nil, v1alpha1.Rule{From: fromSA("shop", "frontend")})
	invalidDeny := testPolicy("shop", "broken", v1alpha1.Deny, nil, v1alpha1.Rule{From: []v1alpha1.Source{{Identities: []string{"spiffe://cluster.local/ns/*/sa/x"}}}})
	dryDeny := testPolicy("shop", "would-deny", v1alpha1.Deny, nil, v1alpha1.Rule{From: fromSA("shop", "frontend")})
	dryDeny.Spec.DryRun = true

	frontend := testPod("shop", "frontend-0", "frontend", true, nil)
	stranger := testPod("shop", "stranger-0", "stranger", true, nil)
	unmeshed := testPod("shop", "plain-0", "frontend", false, nil)
	legacy := testPod("legacy", "old-0", "", true, nil)
	dest := testPod("shop", "backend-0", "backend", true, backend)
	plainDest := testPod("shop", "plain-backend-0", "backend", false, backend)

	for _, tc := range []struct {
		name       string
		policies   []v1alpha1.AuthorizationPolicy
		nsDefault  string // the namespace's default-policy annotation
		meshDflt   authz.DefaultMode
		from       *corev1.Pod
		to         string
		port       string
		method     string
		path       string
		allow      bool
		policy     string
		rule       string
		reason     string
		fromID     string
		warning    string
		dryRunDeny bool
	}{
		{name: "allowed pair", policies: []v1alpha1.AuthorizationPolicy{allowFrontend, otherNS}, from: frontend, port: "8080",
			allow: true, policy: "shop/backend-from-frontend", rule: "1", reason: authz.ReasonAllowRule, fromID: "spiffe://cluster.local/ns/shop/sa/frontend"},
		{name: "denied pair names the ALLOW policy", policies: []v1alpha1.AuthorizationPolicy{allowFrontend}, from: stranger, port: "8080",
			policy: "shop/backend-from-frontend", reason: authz.ReasonNoAllowRule, fromID: "spiffe://cluster.local/ns/shop/sa/stranger"},
		{name: "default deny from the namespace annotation", nsDefault: "deny", from: frontend, port: "8080",
			policy: "default:deny", reason: authz.ReasonDefaultDeny},
		{name: "mesh default deny", meshDflt: authz.DefaultDeny, from: frontend, port: "8080",
			policy: "default:deny", reason: authz.ReasonDefaultDeny},
		{name: "namespace annotation overrides the mesh default", meshDflt: authz.DefaultDeny, nsDefault: "allow-mesh", from: frontend, port: "8080",
			allow: true, policy: "default:allow-mesh", reason: authz.ReasonDefaultAllow},
		{name: "allow-mesh admits a meshed caller", from: stranger, port: "8080",
			allow: true, policy: "default:allow-mesh", reason: authz.ReasonDefaultAllow},
		{name: "allow-mesh refuses an unmeshed caller", from: unmeshed, port: "8080",
			policy: "default:allow-mesh", reason: authz.ReasonNotMesh, warning: "is not meshed"},
		{name: "DENY policy wins over an ALLOW", policies: []v1alpha1.AuthorizationPolicy{allowFrontend, denyAdmin}, from: frontend, port: "8080", method: "GET", path: "/admin/users",
			policy: "shop/no-admin", rule: "0", reason: authz.ReasonDenyRule},
		{name: "the same caller elsewhere is allowed", policies: []v1alpha1.AuthorizationPolicy{allowFrontend, denyAdmin}, from: frontend, port: "8080", method: "GET", path: "/orders",
			allow: true, policy: "shop/backend-from-frontend", rule: "1", reason: authz.ReasonAllowRule},
		{name: "named port in the policy, number asked", policies: []v1alpha1.AuthorizationPolicy{namedPort}, from: frontend, port: "8080",
			allow: true, policy: "shop/http-only", rule: "0", reason: authz.ReasonAllowRule},
		{name: "named port in the policy and asked by name", policies: []v1alpha1.AuthorizationPolicy{namedPort}, from: frontend, port: "http",
			allow: true, policy: "shop/http-only", rule: "0", reason: authz.ReasonAllowRule},
		{name: "named port: another port is denied", policies: []v1alpha1.AuthorizationPolicy{namedPort}, from: frontend, port: "metrics",
			policy: "shop/http-only", reason: authz.ReasonNoAllowRule},
		{name: "root namespace DENY applies mesh-wide", policies: []v1alpha1.AuthorizationPolicy{rootDeny}, from: legacy, port: "8080",
			policy: "mesh-system/no-legacy", rule: "0", reason: authz.ReasonDenyRule, fromID: "spiffe://cluster.local/ns/legacy/sa/default"},
		{name: "another namespace's policy does not apply", policies: []v1alpha1.AuthorizationPolicy{otherNS}, from: frontend, port: "8080",
			allow: true, policy: "default:allow-mesh", reason: authz.ReasonDefaultAllow},
		{name: "a selector that does not match", policies: []v1alpha1.AuthorizationPolicy{testPolicy("shop", "db-only", v1alpha1.Allow, map[string]string{"app": "db"})}, from: frontend, port: "8080",
			allow: true, policy: "default:allow-mesh", reason: authz.ReasonDefaultAllow},
		{name: "an invalid enforced DENY denies everything", policies: []v1alpha1.AuthorizationPolicy{allowFrontend, invalidDeny}, from: frontend, port: "8080",
			policy: "default:deny", reason: authz.ReasonDefaultDeny, warning: "shop/broken"},
		{name: "dry-run DENY reported, not applied", policies: []v1alpha1.AuthorizationPolicy{dryDeny}, from: frontend, port: "8080",
			allow: true, policy: "default:allow-mesh", reason: authz.ReasonDefaultAllow, dryRunDeny: true},
		{name: "unmeshed destination: nothing enforces", policies: []v1alpha1.AuthorizationPolicy{allowFrontend}, from: stranger, to: plainDest.Name, port: "8080",
			allow: true, policy: "none", reason: ReasonNotMeshed},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "shop"}}
			if tc.nsDefault != "" {
				ns.Annotations = map[string]string{authz.DefaultPolicyAnnotation: tc.nsDefault}
			}
			factory := informers.NewSharedInformerFactory(fake.NewClientset(ns, dest, plainDest, frontend), 0)
			ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
			defer cancel()
			to := tc.to
			if to == "" {
				to = dest.Name
			}
			v, err := decide(ctx, meshConfig{TrustDomain: spiffeid.RequireTrustDomainFromString("cluster.local"), MeshDefault: tc.meshDflt},
				factory, policyinformer.Static(tc.policies), checkRequest{From: tc.from, ToNamespace: "shop", To: to, Port: tc.port, Method: tc.method, Path: tc.path})
			if err != nil {
				t.Fatal(err)
			}
			want := "DENY"
			if tc.allow {
				want = "ALLOW"
			}
			if v.Decision != want || v.Policy != tc.policy || v.Rule != tc.rule || v.Reason != tc.reason {
				t.Errorf("got %s by %q rule %q (%s); want %s by %q rule %q (%s)", v.Decision, v.Policy, v.Rule, v.Reason, want, tc.policy, tc.rule, tc.reason)
			}
			if tc.fromID != "" && v.FromIdentity != tc.fromID {
				t.Errorf("caller identity %q, want %q", v.FromIdentity, tc.fromID)
			}
			if tc.from == unmeshed && v.FromIdentity != "" {
				t.Errorf("an unmeshed caller got identity %q", v.FromIdentity)
			}
			if tc.warning != "" && !strings.Contains(strings.Join(v.Warnings, "\n"), tc.warning) {
				t.Errorf("warnings %q do not mention %q", v.Warnings, tc.warning)
			}
			if tc.dryRunDeny != (v.DryRun != nil && v.DryRun.Decision == "DENY") {
				t.Errorf("dry run %+v, want a dry-run denial: %v", v.DryRun, tc.dryRunDeny)
			}
			if v.Port != 8080 && tc.port != "metrics" {
				t.Errorf("port %d, want 8080", v.Port)
			}
		})
	}
}

func TestDecideErrors(t *testing.T) {
	dest := testPod("shop", "backend-0", "backend", true, nil)
	for _, tc := range []struct {
		name, to, port string
		code           int
		msg            string
	}{
		{"missing pod", "nope", "8080", 1, "pod nope not found in namespace shop"},
		{"unknown port name", dest.Name, "grpc", 2, `--port "grpc"`},
		{"port zero", dest.Name, "0", 2, `--port "0"`},
		{"port out of range", dest.Name, "70000", 2, `--port "70000"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			factory := informers.NewSharedInformerFactory(fake.NewClientset(dest), 0)
			_, err := decide(t.Context(), meshConfig{TrustDomain: spiffeid.RequireTrustDomainFromString("cluster.local")},
				factory, policyinformer.Static(nil), checkRequest{ToNamespace: "shop", To: tc.to, Port: tc.port})
			var ee *ExitError
			if !errors.As(err, &ee) || ee.Code != tc.code || !strings.Contains(err.Error(), tc.msg) {
				t.Errorf("error %v; want exit %d and %q", err, tc.code, tc.msg)
			}
		})
	}
}

func TestControllerArgs(t *testing.T) {
	for _, tc := range []struct {
		args     []string
		td, mode string
	}{
		{nil, "cluster.local", "allow-mesh"},
		{[]string{"--trust-domain=example.org", "--default-policy=deny"}, "example.org", "deny"},
		{[]string{"--trust-domain", "example.org", "--default-policy", "allow-same-namespace"}, "example.org", "allow-same-namespace"},
		{[]string{"--default-policy"}, "cluster.local", "allow-mesh"},
	} {
		d := deploymentWithArgs(tc.args)
		td, mode := controllerArgs(d, "cluster.local", "allow-mesh")
		if td != tc.td || mode != tc.mode {
			t.Errorf("%q: %s %s, want %s %s", tc.args, td, mode, tc.td, tc.mode)
		}
	}
}

// TestDecideProxyView: policy check puts what the destination's proxy
// enforces beside what the controller pushes it: current, stale (with how,
// as a warning), or unreadable.
func TestDecideProxyView(t *testing.T) {
	dest := testPod("shop", "backend-0", "backend", true, nil)
	frontend := testPod("shop", "frontend-0", "frontend", true, nil)
	allow := testPolicy("shop", "backend", v1alpha1.Allow, nil, v1alpha1.Rule{From: fromSA("shop", "frontend")})
	run := func(read func(*corev1.Pod) proxyPolicy) *Verdict {
		t.Helper()
		factory := informers.NewSharedInformerFactory(fake.NewClientset(dest, frontend), 0)
		v, err := decide(t.Context(), meshConfig{TrustDomain: spiffeid.RequireTrustDomainFromString("cluster.local")},
			factory, policyinformer.Static([]v1alpha1.AuthorizationPolicy{allow}), checkRequest{From: frontend, ToNamespace: "shop", To: dest.Name, Port: "8080", ReadProxy: read})
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	pushed := run(nil).PolicyVersion
	if run(nil).ProxyCurrent != nil {
		t.Fatal("a proxy view without reading the proxy")
	}
	for _, tc := range []struct {
		name    string
		answer  proxyPolicy
		current *bool
		warning string
	}{
		{"current", proxyPolicy{info: &proxy.PolicyInfo{Source: proxy.SourceController, Version: pushed, DefaultMode: "allow-mesh", Policies: []proxy.PolicyRef{{Namespace: "shop", Name: "backend", Generation: 1}}}}, ptr(true), ""},
		{"stale", proxyPolicy{info: &proxy.PolicyInfo{Source: proxy.SourceController, Version: "old", DefaultMode: "allow-mesh"}}, ptr(false),
			"the destination's proxy does not enforce this policy yet, and may decide otherwise until it does: lacks shop/backend"},
		{"unreadable", proxyPolicy{err: "connection refused"}, nil, "the destination's proxy could not be read: connection refused"},
	} {
		v := run(func(p *corev1.Pod) proxyPolicy {
			if p.Name != dest.Name {
				t.Errorf("read the proxy of %s, not the destination", p.Name)
			}
			return tc.answer
		})
		if (v.ProxyCurrent == nil) != (tc.current == nil) || v.ProxyCurrent != nil && *v.ProxyCurrent != *tc.current {
			t.Errorf("%s: proxyCurrent %v, want %v", tc.name, v.ProxyCurrent, tc.current)
		}
		warnings := strings.Join(v.Warnings, "\n")
		if tc.warning != "" && !strings.Contains(warnings, tc.warning) || tc.warning == "" && strings.Contains(warnings, "proxy") {
			t.Errorf("%s: warnings %q, want %q", tc.name, v.Warnings, tc.warning)
		}
	}
}

func ptr[T any](v T) *T { return &v }
