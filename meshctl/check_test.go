package meshctl

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"testing"
	"time"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	appsv1 "k8s.io/api/apps/v1"
	authorizationv1 "k8s.io/api/authorization/v1"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/version"
	fakediscovery "k8s.io/client-go/discovery/fake"
	dynamicfake "k8s.io/client-go/dynamic/fake"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/client-go/rest"
	k8stesting "k8s.io/client-go/testing"
	"k8s.io/client-go/tools/cache"

	"github.com/mesh-dev/mesh/authz"
	"github.com/mesh-dev/mesh/authz/api/v1alpha1"
	"github.com/mesh-dev/mesh/ca"
	"github.com/mesh-dev/mesh/controlplane/castatus"
	"github.com/mesh-dev/mesh/internal/policyinformer"
	"github.com/mesh-dev/mesh/meshcontroller"
	"github.com/mesh-dev/mesh/proxy"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

var checkNow = time.Date(2026, 11, 24, 12, 0, 0, 0, time.UTC)

// scripted is a checker whose results are given in turn: nil passes, the
// last repeats.
func scripted(desc string, results ...error) (checker, *int) {
	calls := new(int)
	return checker{description: desc, hint: "do " + desc, run: func(context.Context, *checkEnv) (string, error) {
		i := min(*calls, len(results)-1)
		*calls++
		if results[i] != nil {
			return "", results[i]
		}
		return "fine", nil
	}}, calls
}

func TestRunChecks(t *testing.T) {
	boom := errors.New("boom")
	type want struct {
		results []string // per check, in order, "category/result"
		success bool
		calls   []int
	}
	for _, tc := range []struct {
		name  string
		build func() ([]category, []*int)
		wait  time.Duration
		want  want
	}{
		{"all pass", func() ([]category, []*int) {
			a, ca := scripted("a", nil)
			b, cb := scripted("b", nil)
			return []category{{"one", []checker{a}}, {"two", []checker{b}}}, []*int{ca, cb}
		}, 0, want{[]string{"one/success", "two/success"}, true, []int{1, 1}}},
		{"a failure fails the run and the rest still run", func() ([]category, []*int) {
			a, ca := scripted("a", boom)
			b, cb := scripted("b", nil)
			return []category{{"one", []checker{a, b}}}, []*int{ca, cb}
		}, 0, want{[]string{"one/error", "one/success"}, false, []int{1, 1}}},
		{"a warning checker does not fail the run, nor is retried", func() ([]category, []*int) {
			a, ca := scripted("a", boom)
			a.warning = true
			return []category{{"one", []checker{a}}}, []*int{ca}
		}, time.Second, want{[]string{"one/warning"}, true, []int{1}}},
		{"warn() downgrades one failure", func() ([]category, []*int) {
			a, ca := scripted("a", warn(boom))
			return []category{{"one", []checker{a}}}, []*int{ca}
		}, 0, want{[]string{"one/warning"}, true, []int{1}}},
		{"a fatal failure stops the run", func() ([]category, []*int) {
			a, ca := scripted("a", boom)
			a.fatal = true
			b, cb := scripted("b", nil)
			c, cc := scripted("c", nil)
			return []category{{"one", []checker{a, b}}, {"two", []checker{c}}}, []*int{ca, cb, cc}
		}, 0, want{[]string{"one/error"}, false, []int{1, 0, 0}}},
		{"--wait retries until it passes", func() ([]category, []*int) {
			a, ca := scripted("a", boom, boom, nil)
			return []category{{"one", []checker{a}}}, []*int{ca}
		}, 5 * time.Second, want{[]string{"one/success"}, true, []int{3}}},
		{"--wait gives up at the deadline", func() ([]category, []*int) {
			a, ca := scripted("a", boom)
			return []category{{"one", []checker{a}}}, []*int{ca}
		}, 50 * time.Millisecond, want{[]string{"one/error"}, false, nil}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cats, calls := tc.build()
			e := &checkEnv{now: time.Now}
			rep := runChecks(t.Context(), e, cats, tc.wait, 10*time.Millisecond, time.Second)
			var got []string
			for _, c := range rep.Categories {
				for _, r := range c.Checks {
					got = append(got, c.Name+"/"+r.Result)
					if (r.Result == ResultSuccess) != (r.Hint == "") {
						t.Errorf("%s: result %s with hint %q", r.Description, r.Result, r.Hint)
					}
				}
			}
			if strings.Join(got, " ") != strings.Join(tc.want.results, " ") || rep.Success != tc.want.success {
				t.Errorf("results %v success %t; want %v %t", got, rep.Success, tc.want.results, tc.want.success)
			}
			for i, n := range tc.want.calls {
				if *calls[i] != n {
					t.Errorf("check %d ran %d times, want %d", i, *calls[i], n)
				}
			}
			if tc.want.calls == nil && *calls[0] < 3 {
				t.Errorf("check ran %d times in 50ms of --wait at 10ms, want several", *calls[0])
			}
		})
	}
}

func TestPrintCheckReport(t *testing.T) {
	rep := CheckReport{Categories: []CheckCategory{
		{Name: "kubernetes-api", Checks: []CheckResult{{Description: "can reach the Kubernetes API", Result: ResultSuccess, Detail: "v1.35.0"}}},
		{Name: "mesh-controller", Checks: []CheckResult{
			{Description: "the controller Deployment has a ready replica", Result: ResultError, Detail: "0/0 replicas ready", Hint: "scale it up"},
			{Description: "the CA status is published and fresh", Result: ResultWarning, Detail: "stale", Hint: "look"},
		}},
	}}
	var b bytes.Buffer
	if err := printCheckReport(&b, "table", rep); err != nil {
		t.Fatal(err)
	}
	want := `kubernetes-api
--------------
✔ can reach the Kubernetes API (v1.35.0)

mesh-controller
---------------
✖ the controller Deployment has a ready replica: 0/0 replicas ready
    hint: scale it up
‼ the CA status is published and fresh: stale
    hint: look

Status check results are ✖ (1 of 3 checks failed, 1 warnings)
`
	if b.String() != want {
		t.Errorf("table:\n%s\nwant:\n%s", b.String(), want)
	}
	b.Reset()
	if err := printCheckReport(&b, "json", rep); err != nil {
		t.Fatal(err)
	}
	// The documented field names.
	var back map[string]any
	if err := json.Unmarshal(b.Bytes(), &back); err != nil {
		t.Fatal(err)
	}
	cats, _ := back["categories"].([]any)
	if _, ok := back["success"]; !ok || len(cats) != 2 {
		t.Fatalf("json: %s", b.String())
	}
	first := cats[1].(map[string]any)["checks"].([]any)[0].(map[string]any)
	for k, v := range map[string]string{"description": "the controller Deployment has a ready replica", "result": "error", "detail": "0/0 replicas ready", "hint": "scale it up"} {
		if first[k] != v {
			t.Errorf("json %s = %v, want %q", k, first[k], v)
		}
	}
	if cats[1].(map[string]any)["categoryName"] != "mesh-controller" {
		t.Errorf("json categoryName: %s", b.String())
	}
}

// The command's usage errors and exit codes; the checks against a real
// cluster are in e2e/check.
func TestCheckUsage(t *testing.T) {
	for _, tc := range []struct {
		args []string
		code int
		msg  string
	}{
		{[]string{"check", "extra"}, 2, "unknown command"},
		{[]string{"check", "-o", "yaml"}, 2, `--output "yaml": want table or json`},
		{[]string{"check", "--wait", "-1s"}, 2, "--wait -1s: want a duration of zero or more"},
		{[]string{"check", "--wait", "soon"}, 2, "invalid argument"},
		{[]string{"check", "--root-margin", "-1h"}, 2, "--root-margin"},
		{[]string{"check", "--kubeconfig", "/nonexistent/kubeconfig"}, 1, "kubeconfig"},
	} {
		cmd := New()
		var out bytes.Buffer
		cmd.SetOut(&out)
		cmd.SetErr(&out)
		cmd.SetArgs(tc.args)
		err := cmd.Execute()
		if ExitCode(err) != tc.code || err == nil || !strings.Contains(err.Error(), tc.msg) {
			t.Errorf("meshctl %s: exit %d, %v; want %d and %q", strings.Join(tc.args, " "), ExitCode(err), err, tc.code, tc.msg)
		}
	}
}

func TestNamesMatchTheController(t *testing.T) {
	if leaseName != meshcontroller.LeaseName {
		t.Errorf("leaseName %q, the controller's %q", leaseName, meshcontroller.LeaseName)
	}
}

// env is a checkEnv over fake clients holding objs.
func env(t *testing.T, objs []runtime.Object, dyn []runtime.Object) (*checkEnv, *fake.Clientset, *dynamicfake.FakeDynamicClient) {
	t.Helper()
	cs := fake.NewClientset(objs...)
	scheme := runtime.NewScheme()
	d := dynamicfake.NewSimpleDynamicClientWithCustomListKinds(scheme, map[schema.GroupVersionResource]string{
		crdGVR: "CustomResourceDefinitionList", policyGVR: "AuthorizationPolicyList",
	}, dyn...)
	return &checkEnv{kube: cs, dyn: d, meshNS: "mesh-system", now: func() time.Time { return checkNow },
		opts: checkOptions{rootMargin: defaultRootMargin, issuerMargin: defaultIssuerMargin, maxClockSkew: defaultMaxClockSkew, staleAfter: caStatusStaleAfter}}, cs, d
}

type checkCase struct {
	name string
	objs []runtime.Object
	dyn  []runtime.Object
	// result is success, warning or error; detail a part of the detail.
	result, detail string
}

// runCase runs one checker as runChecks does, once.
func runCase(t *testing.T, run func(context.Context, *checkEnv) (string, error), tc checkCase, tweak func(*checkEnv, *fake.Clientset)) {
	t.Helper()
	e, cs, _ := env(t, tc.objs, tc.dyn)
	if tweak != nil {
		tweak(e, cs)
	}
	r := runOne(t.Context(), e, checker{description: "x", hint: "h", run: run}, time.Time{}, time.Millisecond, time.Second)
	if r.Result != tc.result || !strings.Contains(r.Detail, tc.detail) {
		t.Errorf("%s: %s %q; want %s containing %q", tc.name, r.Result, r.Detail, tc.result, tc.detail)
	}
}

func TestCheckKubernetesVersion(t *testing.T) {
	for _, tc := range []struct{ v, result, detail string }{
		{"v1.29.0", ResultSuccess, "v1.29.0"},
		{"v1.35.1+k3s1", ResultSuccess, "v1.35.1+k3s1"},
		{"v2.0.0", ResultSuccess, "v2.0.0"},
		{"v1.28.9", ResultError, "older than 1.29"},
		{"v1.9.0", ResultError, "older than 1.29"},
		{"banana", ResultError, `version "banana"`},
	} {
		runCase(t, checkKubernetesVersion, checkCase{name: tc.v, result: tc.result, detail: tc.detail}, func(_ *checkEnv, cs *fake.Clientset) {
			cs.Discovery().(*fakediscovery.FakeDiscovery).FakedServerVersion = &version.Info{GitVersion: tc.v}
		})
	}
}

func TestCheckClockSkew(t *testing.T) {
	for _, tc := range []struct {
		name           string
		date           time.Time
		before, after  time.Time
		result, detail string
		err            error
	}{
		{"in step", checkNow, checkNow, checkNow.Add(200 * time.Millisecond), ResultSuccess, "within 5s", nil},
		// The Date has whole seconds: a skew that may be exactly the
		// tolerance passes.
		{"ahead by the tolerance, give or take the header's second", checkNow.Add(5 * time.Second), checkNow.Add(-900 * time.Millisecond), checkNow, ResultSuccess, "within", nil},
		{"server ahead", checkNow.Add(10 * time.Second), checkNow, checkNow.Add(100 * time.Millisecond), ResultError, "ahead of meshctl's (tolerance 5s)", nil},
		{"server behind", checkNow.Add(-10 * time.Second), checkNow, checkNow.Add(100 * time.Millisecond), ResultError, "behind meshctl's", nil},
		// A slow answer widens the interval: no false alarm.
		{"slow answer", checkNow.Add(8 * time.Second), checkNow, checkNow.Add(8 * time.Second), ResultSuccess, "within", nil},
		{"no date", time.Time{}, checkNow, checkNow, ResultError, "no Date header", errors.New("no Date header")},
	} {
		runCase(t, checkClockSkew, checkCase{name: tc.name, result: tc.result, detail: tc.detail}, func(e *checkEnv, _ *fake.Clientset) {
			e.serverDate = func(context.Context) (time.Time, time.Time, time.Time, error) {
				return tc.date, tc.before, tc.after, tc.err
			}
		})
	}
}

// controllerDeployment's status says 2 ready, whatever its pods are:
// the check must count the pods.
func controllerDeployment(replicas int32) *appsv1.Deployment {
	return &appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Name: "mesh-controller", Namespace: "mesh-system"},
		Spec:   appsv1.DeploymentSpec{Replicas: new(replicas), Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app.kubernetes.io/name": "mesh-controller"}}},
		Status: appsv1.DeploymentStatus{ReadyReplicas: 2}}
}

func controllerReplica(name string, ready, deleting bool) *corev1.Pod {
	p := pod("mesh-system", name, ready)
	p.Labels = map[string]string{"app.kubernetes.io/name": "mesh-controller"}
	if deleting {
		p.DeletionTimestamp = &metav1.Time{Time: checkNow}
		p.Finalizers = []string{"x"}
	}
	return p
}

func TestCheckControllerReady(t *testing.T) {
	other := pod("mesh-system", "other", true)
	other.Labels = map[string]string{"app.kubernetes.io/name": "other"}
	for _, tc := range []checkCase{
		{"ready", []runtime.Object{controllerDeployment(2), controllerReplica("a", true, false), controllerReplica("b", true, false)}, nil, ResultSuccess, "2/2 replicas ready"},
		{"one of two", []runtime.Object{controllerDeployment(2), controllerReplica("a", true, false), controllerReplica("b", false, false)}, nil, ResultSuccess, "1/2 replicas ready"},
		{"none ready", []runtime.Object{controllerDeployment(2), controllerReplica("a", false, false)}, nil, ResultError, "mesh-system/mesh-controller: 0/2 replicas ready"},
		{"scaled to 0, the status not yet updated", []runtime.Object{controllerDeployment(0)}, nil, ResultError, "0/0 replicas ready"},
		{"the last pod being deleted", []runtime.Object{controllerDeployment(0), controllerReplica("a", true, true)}, nil, ResultError, "0/0 replicas ready"},
		{"another app's pod does not count", []runtime.Object{controllerDeployment(1), other}, nil, ResultError, "0/1 replicas ready"},
		{"not installed", nil, nil, ResultError, "not found (is mesh installed there? --mesh-namespace sets it)"},
	} {
		runCase(t, checkControllerReady, tc, nil)
	}
}

func lease(holder string, renewed time.Time) *coordinationv1.Lease {
	return &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Name: "mesh-controller", Namespace: "mesh-system"},
		Spec: coordinationv1.LeaseSpec{HolderIdentity: &holder, LeaseDurationSeconds: new(int32(15)), RenewTime: &metav1.MicroTime{Time: renewed}}}
}

func pod(ns, name string, ready bool) *corev1.Pod {
	st := corev1.ConditionFalse
	if ready {
		st = corev1.ConditionTrue
	}
	return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Status: corev1.PodStatus{Phase: corev1.PodRunning, Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: st}}}}
}

func TestCheckLeader(t *testing.T) {
	fresh := checkNow.Add(-3 * time.Second)
	for _, tc := range []checkCase{
		{"held by a ready pod", []runtime.Object{lease("ctl-a", fresh), pod("mesh-system", "ctl-a", true)}, nil, ResultSuccess, "held by ctl-a, renewed 3s ago"},
		{"released", []runtime.Object{lease("", fresh)}, nil, ResultError, "has no holder"},
		{"not renewed", []runtime.Object{lease("ctl-a", checkNow.Add(-time.Minute)), pod("mesh-system", "ctl-a", true)}, nil, ResultError, "last renewed 1m0s ago, more than its 15s duration"},
		{"holder gone", []runtime.Object{lease("ctl-a", fresh)}, nil, ResultError, "the holder ctl-a is not a pod in mesh-system"},
		{"holder not ready", []runtime.Object{lease("ctl-a", fresh), pod("mesh-system", "ctl-a", false)}, nil, ResultError, "the holder ctl-a is not ready"},
		{"holder in another namespace does not count", []runtime.Object{lease("ctl-a", fresh), pod("elsewhere", "ctl-a", true)}, nil, ResultError, "not a pod in mesh-system"},
		{"no lease", nil, nil, ResultError, "no controller replica has ever led"},
	} {
		runCase(t, checkLeader, tc, nil)
	}
}

func webhooks(mutCA, valCA []byte) []runtime.Object {
	return []runtime.Object{
		&admissionregistrationv1.MutatingWebhookConfiguration{ObjectMeta: metav1.ObjectMeta{Name: "mesh-injector"},
			Webhooks: []admissionregistrationv1.MutatingWebhook{{Name: "inject.mesh.dev", ClientConfig: admissionregistrationv1.WebhookClientConfig{CABundle: mutCA}}}},
		&admissionregistrationv1.ValidatingWebhookConfiguration{ObjectMeta: metav1.ObjectMeta{Name: "mesh-policy-validator"},
			Webhooks: []admissionregistrationv1.ValidatingWebhook{{Name: "policy.mesh.dev", ClientConfig: admissionregistrationv1.WebhookClientConfig{CABundle: valCA}}}},
	}
}

func TestCheckWebhookConfigs(t *testing.T) {
	pem := []byte("-----BEGIN CERTIFICATE-----")
	for _, tc := range []checkCase{
		{"both with a caBundle", webhooks(pem, pem), nil, ResultSuccess, "mesh-injector, mesh-policy-validator"},
		{"injector without", webhooks(nil, pem), nil, ResultError, "mesh-injector webhook inject.mesh.dev has no caBundle"},
		{"validator without", webhooks(pem, nil), nil, ResultError, "mesh-policy-validator webhook policy.mesh.dev has no caBundle"},
		{"none", nil, nil, ResultError, "MutatingWebhookConfiguration mesh-injector not found; ValidatingWebhookConfiguration mesh-policy-validator not found"},
	} {
		runCase(t, checkWebhookConfigs, tc, nil)
	}
	// --pre: the same objects are a conflict, as a warning.
	for _, tc := range []checkCase{
		{"fresh cluster", nil, nil, ResultSuccess, ""},
		{"installed", webhooks(pem, pem), nil, ResultError, "MutatingWebhookConfiguration mesh-injector and ValidatingWebhookConfiguration mesh-policy-validator already exist"},
	} {
		runCase(t, checkNoWebhooks, tc, nil)
	}
}

// The webhook probes: the fake API server's answers stand for the real
// one's (e2e/check has the real webhook).
func TestCheckPolicyWebhook(t *testing.T) {
	denied := apierrors.NewInvalid(schema.GroupKind{Group: "security.mesh.dev", Kind: "AuthorizationPolicy"}, "", nil)
	denied.ErrStatus.Message = `admission webhook "policy.mesh.dev" denied the request: spec.rules[0].from[0].identities[0]: Invalid value: "not a spiffe id"`
	forbidden := apierrors.NewForbidden(schema.GroupResource{Group: "security.mesh.dev", Resource: "authorizationpolicies"}, "", errors.New("no RBAC rule"))
	unreachable := apierrors.NewInternalError(errors.New(`failed calling webhook "policy.mesh.dev": failed to call webhook: Post "https://mesh-webhook.mesh-system.svc:443/validate-policy?timeout=5s": no endpoints available for service "mesh-webhook"`))
	for _, tc := range []struct {
		name string
		// answer to a create of the invalid and the valid probe
		invalid, valid     error
		refuses, accepts   string // results
		refusesD, acceptsD string
	}{
		{"webhook up", denied, nil, ResultSuccess, ResultSuccess, "refused by the webhook", ""},
		{"webhook down, failurePolicy Fail", unreachable, unreachable, ResultError, ResultError, "the API server could not call the webhook: Internal error occurred: failed calling webhook", "the API server could not call the webhook: Internal error occurred: failed calling webhook"},
		{"webhook down, failurePolicy Ignore", nil, nil, ResultError, ResultSuccess, "the invalid policy was accepted", ""},
		{"RBAC refuses first", forbidden, forbidden, ResultError, ResultError, "refused, but not by the webhook: authorizationpolicies.security.mesh.dev is forbidden", "refused: authorizationpolicies.security.mesh.dev is forbidden"},
	} {
		var dryRuns []bool
		tweak := func(e *checkEnv, _ *fake.Clientset) {
			e.dyn.(*dynamicfake.FakeDynamicClient).PrependReactor("create", "authorizationpolicies", func(a k8stesting.Action) (bool, runtime.Object, error) {
				c := a.(k8stesting.CreateActionImpl)
				dryRuns = append(dryRuns, len(c.CreateOptions.DryRun) == 1 && c.CreateOptions.DryRun[0] == metav1.DryRunAll)
				u := c.Object.(*unstructured.Unstructured)
				var p v1alpha1.AuthorizationPolicy
				if err := runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, &p); err != nil {
					return true, nil, err
				}
				id := p.Spec.Rules[0].From[0].Identities[0]
				if strings.HasPrefix(id, "spiffe://") {
					return true, u, tc.valid
				}
				return true, nil, tc.invalid
			})
		}
		objs := webhooks([]byte("x"), []byte("x"))
		runCase(t, checkPolicyWebhookRefuses, checkCase{name: tc.name + " refuses", objs: objs, result: tc.refuses, detail: tc.refusesD}, tweak)
		runCase(t, checkPolicyWebhookAccepts, checkCase{name: tc.name + " accepts", objs: objs, result: tc.accepts, detail: tc.acceptsD}, tweak)
		for _, d := range dryRuns {
			if !d {
				t.Errorf("%s: a probe policy was created without dryRun=All", tc.name)
			}
		}
	}
}

func TestCheckInjector(t *testing.T) {
	labelled := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "shop", Labels: map[string]string{"mesh.dev/inject": "enabled"}}}
	for _, tc := range []struct {
		checkCase
		inject bool
	}{
		{checkCase{"injected", []runtime.Object{labelled}, nil, ResultSuccess, "in namespace shop"}, true},
		{checkCase{"not injected", []runtime.Object{labelled}, nil, ResultError, "came back without the mesh-proxy sidecar"}, false},
		{checkCase{"no labelled namespace", []runtime.Object{&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "other"}}}, nil, ResultSuccess, "not exercised"}, true},
	} {
		runCase(t, checkInjector, tc.checkCase, func(_ *checkEnv, cs *fake.Clientset) {
			cs.PrependReactor("create", "pods", func(a k8stesting.Action) (bool, runtime.Object, error) {
				c := a.(k8stesting.CreateActionImpl)
				if len(c.CreateOptions.DryRun) != 1 {
					return true, nil, errors.New("not a dry run")
				}
				p := c.Object.(*corev1.Pod).DeepCopy()
				if tc.inject {
					p.Spec.InitContainers = append(p.Spec.InitContainers, corev1.Container{Name: "mesh-proxy"})
				}
				return true, p, nil
			})
		})
	}
}

// activeRootFP is caDoc's active root's fingerprint: hex, as the CA and
// the proxies write them.
var activeRootFP = strings.Repeat("a", 64)

func caDoc(t *testing.T, updated time.Time, rootLeft, issuerLeft time.Duration) *corev1.ConfigMap {
	t.Helper()
	d := castatus.Document{
		Status: ca.Status{
			Roots:  []ca.CertStatus{{Role: ca.RoleActive, Fingerprint: activeRootFP, Subject: "CN=root", NotBefore: checkNow.Add(-time.Hour), NotAfter: checkNow.Add(rootLeft)}},
			Issuer: ca.CertStatus{Role: ca.RoleActive, Fingerprint: strings.Repeat("b", 64), Root: activeRootFP, Subject: "CN=issuer", NotBefore: checkNow.Add(-time.Hour), NotAfter: checkNow.Add(issuerLeft)},
		},
		UpdatedAt: updated, Replica: "ctl-a",
	}
	b, err := json.Marshal(d)
	if err != nil {
		t.Fatal(err)
	}
	return &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: castatus.ConfigMapName, Namespace: "mesh-system"}, Data: map[string]string{castatus.StatusKey: string(b)}}
}

func TestCheckCA(t *testing.T) {
	year, month := 365*24*time.Hour, 30*24*time.Hour
	fresh := checkNow.Add(-30 * time.Second)
	for _, tc := range []struct {
		run func(context.Context, *checkEnv) (string, error)
		checkCase
	}{
		{checkCAStatusFresh, checkCase{"fresh", []runtime.Object{caDoc(t, fresh, year, month)}, nil, ResultSuccess, "written by ctl-a 30s ago"}},
		{checkCAStatusFresh, checkCase{"stale", []runtime.Object{caDoc(t, checkNow.Add(-10*time.Minute), year, month)}, nil, ResultWarning, "10m0s ago, more than 3m0s"}},
		{checkCAStatusFresh, checkCase{"not published", nil, nil, ResultError, "no CA status published"}},
		{checkRoot, checkCase{"root with a year", []runtime.Object{caDoc(t, fresh, year, month)}, nil, ResultSuccess, "365d0h left, margin 60d0h"}},
		{checkRoot, checkCase{"root inside the margin", []runtime.Object{caDoc(t, fresh, 59*24*time.Hour, month)}, nil, ResultError, "CN=root (active) expires at 2027-01-22T12:00:00Z, in 59d0h, less than 60d0h"}},
		{checkRoot, checkCase{"root expired", []runtime.Object{caDoc(t, fresh, -time.Hour, month)}, nil, ResultError, "in -1h0m0s"}},
		{checkIssuer, checkCase{"issuer with 30 days", []runtime.Object{caDoc(t, fresh, year, month)}, nil, ResultSuccess, "30d0h left, margin 3d0h"}},
		{checkIssuer, checkCase{"issuer at its rotation point", []runtime.Object{caDoc(t, fresh, year, 5*24*time.Hour)}, nil, ResultSuccess, "5d0h left"}},
		{checkIssuer, checkCase{"issuer overdue", []runtime.Object{caDoc(t, fresh, year, 48*time.Hour)}, nil, ResultError, "CN=issuer (active) expires at 2026-11-26T12:00:00Z, in 2d0h, less than 3d0h"}},
	} {
		runCase(t, tc.run, tc.checkCase, nil)
	}
}

func crd(versions []string, established string) *unstructured.Unstructured {
	var vs []any
	for _, v := range versions {
		vs = append(vs, map[string]any{"name": v, "served": true, "storage": true})
	}
	u := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
		"metadata": map[string]any{"name": crdName},
		"spec":     map[string]any{"versions": vs},
	}}
	if established != "" {
		u.Object["status"] = map[string]any{"conditions": []any{map[string]any{"type": "Established", "status": established, "message": "the initial names have been accepted"}}}
	}
	return u
}

func TestCheckCRD(t *testing.T) {
	for _, tc := range []checkCase{
		{"established", nil, []runtime.Object{crd([]string{"v1alpha1"}, "True")}, ResultSuccess, "serves v1alpha1"},
		{"not established", nil, []runtime.Object{crd([]string{"v1alpha1"}, "False")}, ResultError, "not established: the initial names"},
		{"no condition yet", nil, []runtime.Object{crd([]string{"v1alpha1"}, "")}, ResultError, "no Established condition yet"},
		{"another version", nil, []runtime.Object{crd([]string{"v2"}, "True")}, ResultError, "it does not serve v1alpha1, the version this meshctl knows (it serves v2)"},
		{"absent", nil, nil, ResultError, "not found"},
	} {
		runCase(t, checkCRDEstablished, tc, nil)
	}
	for _, tc := range []checkCase{
		{"fresh cluster", nil, nil, ResultSuccess, ""},
		{"ours already there", nil, []runtime.Object{crd([]string{"v1alpha1"}, "True")}, ResultWarning, "already exists"},
		{"another version", nil, []runtime.Object{crd([]string{"v1beta9"}, "True")}, ResultError, "serves v1beta9, not v1alpha1"},
	} {
		runCase(t, checkNoConflictingCRD, tc, nil)
	}
}

func TestCanCreate(t *testing.T) {
	for _, tc := range []struct {
		r       chartResource
		allowed bool
		result  string
		detail  string
	}{
		{chartResources[0], true, ResultSuccess, ""},
		{chartResources[0], false, ResultError, "not allowed to create customresourcedefinitions cluster-wide: no RBAC rule"},
		{chartResource{"apps", "deployments", "Deployments", true}, false, ResultError, "not allowed to create deployments in namespace mesh-system"},
	} {
		var asked *authorizationv1.ResourceAttributes
		runCase(t, canCreate(tc.r), checkCase{name: tc.r.resource, result: tc.result, detail: tc.detail}, func(_ *checkEnv, cs *fake.Clientset) {
			cs.PrependReactor("create", "selfsubjectaccessreviews", func(a k8stesting.Action) (bool, runtime.Object, error) {
				r := a.(k8stesting.CreateActionImpl).Object.(*authorizationv1.SelfSubjectAccessReview).DeepCopy()
				asked = r.Spec.ResourceAttributes
				r.Status.Allowed = tc.allowed
				if !tc.allowed {
					r.Status.Reason = "no RBAC rule"
				}
				return true, r, nil
			})
		})
		wantNS := ""
		if tc.r.namespaced {
			wantNS = "mesh-system"
		}
		if asked == nil || asked.Verb != "create" || asked.Group != tc.r.group || asked.Resource != tc.r.resource || asked.Namespace != wantNS {
			t.Errorf("%s: asked %+v", tc.r.resource, asked)
		}
	}
}

func TestCheckNativeSidecars(t *testing.T) {
	for _, tc := range []struct {
		name   string
		drop   bool
		result string
		detail string
	}{
		{"kept", false, ResultSuccess, ""},
		{"dropped", true, ResultError, "dropped the init container's restartPolicy: Always"},
	} {
		runCase(t, checkNativeSidecars, checkCase{name: tc.name, result: tc.result, detail: tc.detail}, func(_ *checkEnv, cs *fake.Clientset) {
			cs.PrependReactor("create", "pods", func(a k8stesting.Action) (bool, runtime.Object, error) {
				p := a.(k8stesting.CreateActionImpl).Object.(*corev1.Pod).DeepCopy()
				if tc.drop {
					for i := range p.Spec.InitContainers {
						p.Spec.InitContainers[i].RestartPolicy = nil
					}
				}
				return true, p, nil
			})
		})
	}
}

func policy(ns, name string, gen int64, s v1alpha1.AuthorizationPolicyStatus) runtime.Object {
	p := &v1alpha1.AuthorizationPolicy{
		TypeMeta:   metav1.TypeMeta{APIVersion: v1alpha1.GroupVersion.String(), Kind: "AuthorizationPolicy"},
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Generation: gen},
		Spec:       v1alpha1.AuthorizationPolicySpec{Action: v1alpha1.Allow},
		Status:     s,
	}
	obj, err := runtime.DefaultUnstructuredConverter.ToUnstructured(p)
	if err != nil {
		panic(err)
	}
	return &unstructured.Unstructured{Object: obj}
}

func enforced(gen int64, n, of int32, reason string, pods ...string) v1alpha1.AuthorizationPolicyStatus {
	return v1alpha1.AuthorizationPolicyStatus{ObservedGeneration: gen, SelectedWorkloads: of, EnforcedWorkloads: n, Enforced: fmt.Sprintf("%d/%d", n, of),
		Workloads: pods, Conditions: []metav1.Condition{{Type: v1alpha1.ConditionEnforced, Reason: reason}}}
}

func TestCheckPolicyEnforced(t *testing.T) {
	for _, tc := range []checkCase{
		{"none", nil, nil, ResultSuccess, "no policies"},
		{"all enforced", nil, []runtime.Object{policy("shop", "a", 3, enforced(3, 2, 2, v1alpha1.ReasonEnforced, "shop/x", "shop/y"))}, ResultSuccess, "1 policy"},
		{"one proxy lags", nil, []runtime.Object{
			policy("shop", "a", 3, enforced(3, 2, 2, v1alpha1.ReasonEnforced)),
			policy("shop", "b", 4, enforced(4, 1, 2, v1alpha1.ReasonPending, "shop/y", "shop/x")),
		}, ResultError, "1 of 2 policies lag: shop/b: 1/2 proxies enforce generation 4 (selected: shop/x, shop/y)"},
		{"status behind the spec", nil, []runtime.Object{policy("shop", "a", 5, enforced(4, 2, 2, v1alpha1.ReasonEnforced))}, ResultError, "shop/a: the status describes generation 4, the policy is at 5"},
		{"never processed", nil, []runtime.Object{policy("shop", "a", 1, v1alpha1.AuthorizationPolicyStatus{})}, ResultError, "the status describes generation 0, the policy is at 1"},
		{"selects nothing: nothing to enforce", nil, []runtime.Object{policy("shop", "a", 2, enforced(2, 0, 0, v1alpha1.ReasonNoWorkloads))}, ResultSuccess, "1 policy"},
		{"invalid: no proxy will enforce it", nil, []runtime.Object{policy("shop", "a", 2, enforced(2, 0, 3, v1alpha1.ReasonInvalid))}, ResultSuccess, "1 policy"},
	} {
		runCase(t, checkPolicyEnforced, tc, nil)
	}
}

// proxyAnswer is a fake proxy's /identity answer, or its error.
type proxyAnswer struct {
	body []byte
	err  error
}

func (p proxyAnswer) DoRaw(context.Context) ([]byte, error) { return p.body, p.err }
func (p proxyAnswer) Stream(context.Context) (io.ReadCloser, error) {
	return io.NopCloser(bytes.NewReader(p.body)), p.err
}

// fakeProxies answers pods/proxy GETs of path on the admin port with each
// pod's answer; anything else is an error.
func fakeProxies(cs *fake.Clientset, path string, answers map[string]proxyAnswer) {
	cs.PrependProxyReactor("pods", func(a k8stesting.Action) (bool, rest.ResponseWrapper, error) {
		g := a.(k8stesting.ProxyGetAction)
		if g.GetPath() != path || g.GetPort() != "15020" {
			return true, proxyAnswer{err: fmt.Errorf("unexpected %s:%s", g.GetPort(), g.GetPath())}, nil
		}
		ans, ok := answers[g.GetName()]
		if !ok {
			return true, proxyAnswer{err: fmt.Errorf("no proxy in pod %s", g.GetName())}, nil
		}
		return true, ans, nil
	})
}

func meshedPod(name string, phase corev1.PodPhase) *corev1.Pod {
	always := corev1.ContainerRestartPolicyAlways
	return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "shop"},
		Spec: corev1.PodSpec{
			InitContainers: []corev1.Container{{Name: "mesh-proxy", RestartPolicy: &always, Args: []string{"--admin-port=15020"}}},
			Containers:     []corev1.Container{{Name: "app"}},
		},
		Status: corev1.PodStatus{Phase: phase, PodIP: "198.18.0.9"}}
}

func identityJSON(t *testing.T, ready bool, notAfter time.Time, roots ...string) []byte {
	t.Helper()
	b, err := json.Marshal(map[string]any{"spiffeID": "spiffe://cluster.local/ns/shop/sa/x", "ready": ready,
		"notBefore": checkNow.Add(-time.Minute), "notAfter": notAfter, "bundleRoots": roots})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestCheckDataPlane(t *testing.T) {
	hour := checkNow.Add(time.Hour)
	unmeshed := pod("shop", "plain", true)
	done := meshedPod("job-done", corev1.PodSucceeded)
	going := meshedPod("going", corev1.PodRunning)
	going.DeletionTimestamp = &metav1.Time{Time: checkNow}
	going.Finalizers = []string{"x"}
	ca := caDoc(t, checkNow, 365*24*time.Hour, 30*24*time.Hour)
	for _, tc := range []struct {
		name    string
		pods    []runtime.Object
		answers map[string]proxyAnswer
		ready   checkCase
		roots   checkCase
	}{
		{"no meshed pods", []runtime.Object{unmeshed, done, going}, nil,
			checkCase{result: ResultSuccess, detail: "no meshed pods"}, checkCase{result: ResultSuccess, detail: "no meshed pods"}},
		{"healthy", []runtime.Object{meshedPod("a", corev1.PodRunning), meshedPod("b", corev1.PodRunning), unmeshed, done},
			map[string]proxyAnswer{"a": {body: identityJSON(t, true, hour, activeRootFP)}, "b": {body: identityJSON(t, true, hour, "sha256:old", activeRootFP)}},
			checkCase{result: ResultSuccess, detail: "2 pods"}, checkCase{result: ResultSuccess, detail: "2 proxies, 1 root"}},
		{"one not ready, one expired, one unreachable, one lacking the root", []runtime.Object{meshedPod("a", corev1.PodRunning), meshedPod("b", corev1.PodRunning), meshedPod("c", corev1.PodRunning), meshedPod("d", corev1.PodRunning)},
			map[string]proxyAnswer{
				"a": {body: identityJSON(t, false, hour, activeRootFP)},
				"b": {body: identityJSON(t, true, checkNow.Add(-time.Second), activeRootFP)},
				"c": {err: errors.New("connection refused")},
				"d": {body: identityJSON(t, true, hour, "sha256:old")},
			},
			checkCase{result: ResultError, detail: "3 of 4 not healthy: shop/a (ready false, SVID valid 2026-11-24T11:59:00Z to 2026-11-24T13:00:00Z), shop/b (ready true"},
			checkCase{result: ResultError, detail: "2 of 4 proxies; missing roots: shop/d (lacks active aaaaaaaaaaaa); unreadable: shop/c"}},
		{"a proxy answering garbage", []runtime.Object{meshedPod("a", corev1.PodRunning)},
			map[string]proxyAnswer{"a": {body: []byte("<html>")}},
			checkCase{result: ResultError, detail: "shop/a (the proxy's /identity answered something meshctl cannot read"},
			checkCase{result: ResultError, detail: "unreadable: shop/a"}},
	} {
		tweak := func(_ *checkEnv, cs *fake.Clientset) { fakeProxies(cs, "/identity", tc.answers) }
		tc.ready.name, tc.ready.objs = tc.name+" ready", tc.pods
		runCase(t, checkProxiesReady, tc.ready, tweak)
		tc.roots.name, tc.roots.objs = tc.name+" roots", append(slices.Clone(tc.pods), ca)
		runCase(t, checkProxiesTrustRoots, tc.roots, tweak)
	}
}

func TestHintNamesMeshNamespace(t *testing.T) {
	e := &checkEnv{now: time.Now, meshNS: "mesh"}
	c := checker{description: "x", hint: "kubectl -n MESH_NAMESPACE get pods", run: func(context.Context, *checkEnv) (string, error) { return "", errors.New("no") }}
	if r := runOne(t.Context(), e, c, time.Time{}, time.Millisecond, time.Second); r.Hint != "kubectl -n mesh get pods" {
		t.Errorf("hint %q", r.Hint)
	}
}

// FuzzCRDFields: the CRD as the API server answers it is read field by
// field from unstructured JSON; no shape of it may panic, and a version is
// reported served only when the object says so.
func FuzzCRDFields(f *testing.F) {
	for _, seed := range []string{
		`{"spec":{"versions":[{"name":"v1alpha1","served":true}]},"status":{"conditions":[{"type":"Established","status":"True"}]}}`,
		`{"spec":{"versions":[{"name":"v1alpha1","served":"yes"},7,null,{"name":3,"served":true}]}}`,
		`{"spec":{"versions":"v1alpha1"},"status":{"conditions":[null,"x",{"type":"Established","status":false,"message":7}]}}`,
		`{"spec":null,"status":[]}`,
		`{}`,
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		var obj map[string]any
		if json.Unmarshal(b, &obj) != nil || obj == nil {
			return
		}
		u := &unstructured.Unstructured{Object: obj}
		for _, v := range crdVersions(u) {
			if v == "" {
				t.Errorf("an empty version from %s", b)
			}
		}
		if crdServes(u, "v1alpha1") && !strings.Contains(string(b), "v1alpha1") {
			t.Errorf("serves v1alpha1 from %s", b)
		}
		st, _ := crdCondition(u, "Established")
		if st == "True" && !strings.Contains(string(b), `"True"`) {
			t.Errorf("established from %s", b)
		}
	})
}

// The data plane's checks share one reading of the proxies; a retry reads
// them again.
func TestIdentitiesReused(t *testing.T) {
	now := checkNow
	e, cs, _ := env(t, []runtime.Object{meshedPod("a", corev1.PodRunning), meshedPod("b", corev1.PodRunning), caDoc(t, checkNow, 365*24*time.Hour, 30*24*time.Hour)}, nil)
	e.now = func() time.Time { return now }
	reads := 0
	cs.PrependProxyReactor("pods", func(k8stesting.Action) (bool, rest.ResponseWrapper, error) {
		reads++
		return true, proxyAnswer{body: identityJSON(t, true, checkNow.Add(time.Hour), activeRootFP)}, nil
	})
	for _, step := range []struct {
		run   func(context.Context, *checkEnv) (string, error)
		after time.Duration
		reads int
	}{
		{checkProxiesReady, 0, 2},
		{checkProxiesTrustRoots, 100 * time.Millisecond, 2},
		{checkProxiesReady, checkRetryEvery, 4},
	} {
		now = now.Add(step.after)
		if _, err := step.run(t.Context(), e); err != nil {
			t.Fatal(err)
		}
		if reads != step.reads {
			t.Errorf("after %s: %d reads of /identity, want %d", step.after, reads, step.reads)
		}
	}
}

func TestPreHints(t *testing.T) {
	want := map[string]string{
		"can create CustomResourceDefinitions":       "kubectl auth can-i create customresourcedefinitions.apiextensions.k8s.io",
		"can create Deployments in --mesh-namespace": "kubectl auth can-i create deployments.apps -n mesh",
		"can create Services in --mesh-namespace":    "kubectl auth can-i create services -n mesh",
	}
	e := &checkEnv{now: time.Now, meshNS: "mesh"}
	for _, cat := range preCategories() {
		for _, c := range cat.checkers {
			w, ok := want[c.description]
			if !ok {
				continue
			}
			delete(want, c.description)
			c.run = func(context.Context, *checkEnv) (string, error) { return "", errors.New("no") }
			if r := runOne(t.Context(), e, c, time.Time{}, time.Millisecond, time.Second); !strings.HasSuffix(r.Hint, w) {
				t.Errorf("%s: hint %q, want it to end %q", c.description, r.Hint, w)
			}
		}
	}
	if len(want) > 0 {
		t.Errorf("no checks %v", want)
	}
}

// policyAnswer is a proxy's /policy answer.
func policyAnswer(t *testing.T, source, version, mode string, refs ...proxy.PolicyRef) proxyAnswer {
	t.Helper()
	b, err := json.Marshal(proxy.PolicyInfo{Source: source, Version: version, DefaultMode: mode, Policies: refs, Since: checkNow})
	if err != nil {
		t.Fatal(err)
	}
	return proxyAnswer{body: b}
}

// TestCheckProxiesPolicyCurrent: each proxy's /policy is compared with
// what the controller's inventory computes for its pod from the same
// pods and policies; every proxy that differs is named, with how.
func TestCheckProxiesPolicyCurrent(t *testing.T) {
	a, b := meshedPod("a", corev1.PodRunning), meshedPod("b", corev1.PodRunning)
	pods := []runtime.Object{a, b, pod("shop", "plain", true), meshedPod("done", corev1.PodSucceeded)}
	shopPolicy := testPolicy("shop", "backend", v1alpha1.Allow, nil, v1alpha1.Rule{From: fromSA("shop", "frontend")})
	shopPolicy.Generation = 2
	invalidDeny := testPolicy("shop", "broken", v1alpha1.Deny, nil, v1alpha1.Rule{From: []v1alpha1.Source{{Identities: []string{"spiffe://cluster.local/ns/*/sa/x"}}}})
	policies := []v1alpha1.AuthorizationPolicy{shopPolicy}

	// What the controller pushes to a, computed as it does.
	e0, _, _ := env(t, pods, nil)
	inv, stop, err := runInventory(t.Context(), meshConfig{TrustDomain: spiffeid.RequireTrustDomainFromString("cluster.local"), MeshDefault: authz.DefaultAllowMesh},
		informers.NewSharedInformerFactory(e0.kube, 0), policyinformer.Static(policies))
	if err != nil {
		t.Fatal(err)
	}
	want, err := inv.Policy("shop", "a")
	stop()
	if err != nil {
		t.Fatal(err)
	}
	current := policyAnswer(t, proxy.SourceController, want.Version, "allow-mesh", proxy.PolicyRef{Namespace: "shop", Name: "backend", Generation: 2})
	const version = "; version old, the controller's " // followed by want.Version's first 12 characters
	for _, tc := range []struct {
		name     string
		objs     []runtime.Object
		policies []v1alpha1.AuthorizationPolicy
		answers  map[string]proxyAnswer
		result   string
		detail   string
	}{
		{"no meshed pods", []runtime.Object{pod("shop", "plain", true)}, policies, nil, ResultSuccess, "no meshed pods"},
		{"both current", pods, policies, map[string]proxyAnswer{"a": current, "b": current}, ResultSuccess, "2 proxies"},
		{"an older generation", pods, policies, map[string]proxyAnswer{"a": current,
			"b": policyAnswer(t, proxy.SourceController, "old", "allow-mesh", proxy.PolicyRef{Namespace: "shop", Name: "backend", Generation: 1})},
			ResultError, "1 of 2 proxies; lagging: shop/b (enforces shop/backend at generation 1, not 2" + version + want.Version[:12] + ")"},
		{"a policy missing, a deleted one kept, another default", pods, policies, map[string]proxyAnswer{"a": current,
			"b": policyAnswer(t, proxy.SourceController, "old", "deny", proxy.PolicyRef{Namespace: "shop", Name: "gone", Generation: 1})},
			ResultError, "shop/b (lacks shop/backend, still enforces shop/gone, default deny, not allow-mesh" + version},
		{"same policies, another version", pods, policies, map[string]proxyAnswer{"a": current,
			"b": policyAnswer(t, proxy.SourceController, "old", "allow-mesh", proxy.PolicyRef{Namespace: "shop", Name: "backend", Generation: 2})},
			ResultError, "shop/b (the same policies, compiled for an older version of the pod or its policies" + version},
		{"a policy file, not the controller's", pods, policies, map[string]proxyAnswer{"a": current,
			"b": policyAnswer(t, proxy.SourceFile, "", "allow-mesh", proxy.PolicyRef{Namespace: "shop", Name: "backend", Generation: 2})},
			ResultError, `shop/b (enforces policy from "file", not the controller's)`},
		{"unreachable and unreadable", pods, policies, map[string]proxyAnswer{"a": {err: errors.New("connection refused")}, "b": {body: []byte("<html>")}},
			ResultError, "2 of 2 proxies; unreadable: shop/a (the proxy's admin endpoint (port 15020) did not answer /policy through the API server: connection refused), shop/b (the proxy's /policy answered something meshctl cannot read"},
		{"an invalid DENY: the controller sends nothing new", pods, append(slices.Clone(policies), invalidDeny), map[string]proxyAnswer{"a": current, "b": current},
			ResultError, "2 of 2 proxies; lagging: shop/a (an enforced DENY policy that selects it is invalid"},
	} {
		e, cs, _ := env(t, tc.objs, nil)
		e.policyInformer = func() cache.SharedIndexInformer { return policyinformer.Static(tc.policies) }
		fakeProxies(cs, "/policy", tc.answers)
		r := runOne(t.Context(), e, checker{description: "x", hint: "h", run: checkProxiesPolicyCurrent}, time.Time{}, time.Millisecond, 10*time.Second)
		if r.Result != tc.result || !strings.Contains(r.Detail, tc.detail) {
			t.Errorf("%s: %s %q;\nwant %s containing %q", tc.name, r.Result, r.Detail, tc.result, tc.detail)
		}
	}
}
