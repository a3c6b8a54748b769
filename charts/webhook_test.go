package charts

import (
	"bytes"
	"encoding/json"
	"slices"
	"testing"

	admissionv1 "k8s.io/api/admissionregistration/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/strategicpatch"
)

// TestInjectionWebhook: the contract with the controller's webhook server
// (names, path, Service), and which namespaces and pods the API server
// sends, evaluated with the API machinery's own selectors.
func TestInjectionWebhook(t *testing.T) {
	type ns struct {
		name   string
		labels map[string]string
	}
	enabled := map[string]string{"mesh.dev/inject": "enabled"}
	for _, c := range []struct {
		name          string
		file          string
		sets          []string
		failurePolicy admissionv1.FailurePolicyType
		sent, notSent []ns
	}{
		{
			name: "default", failurePolicy: admissionv1.Ignore,
			// Annotated pods anywhere not excluded: every other namespace
			// is sent, and the webhook decides.
			sent: []ns{{"shop", enabled}, {"default", nil}, {"team-a", map[string]string{"other": "x"}}},
			notSent: []ns{
				{"kube-system", nil},
				// Excluded namespaces stay excluded whatever their labels:
				// the controller's own namespace must not need itself.
				{"kube-system", enabled}, {"mesh-system", enabled},
				{"shop", map[string]string{"mesh.dev/inject": "disabled"}},
			},
		},
		{
			name: "full", file: fullValues, failurePolicy: admissionv1.Fail,
			// annotatedPodsInAnyNamespace false: labelled namespaces only,
			// so failurePolicy Fail cannot block the rest of the cluster.
			sent:    []ns{{"shop", enabled}},
			notSent: []ns{{"default", nil}, {"monitoring", enabled}, {"kube-system", enabled}, {"mesh-system", enabled}, {"shop", map[string]string{"mesh.dev/inject": "true"}}},
		},
		{
			// The list replaces the default; the release namespace stays.
			name: "release namespace is always excluded", sets: []string{"injector.excludeNamespaces={default}"}, failurePolicy: admissionv1.Ignore,
			sent:    []ns{{"kube-system", nil}},
			notSent: []ns{{"mesh-system", enabled}, {"default", enabled}},
		},
	} {
		t.Run(c.name, func(t *testing.T) {
			o := decode(t, mustRender(t, c.file, c.sets...))
			if len(o.mutating) != 1 || o.mutating[0].Name != "mesh-injector" || len(o.mutating[0].Webhooks) != 1 {
				t.Fatalf("want one MutatingWebhookConfiguration mesh-injector with one webhook: %+v", o.mutating)
			}
			w := o.mutating[0].Webhooks[0]
			checkClient(t, w.Name, w.ClientConfig, "inject.mesh.dev", "/inject")
			if w.FailurePolicy == nil || *w.FailurePolicy != c.failurePolicy {
				t.Errorf("failurePolicy %v; want %s", w.FailurePolicy, c.failurePolicy)
			}
			if w.SideEffects == nil || *w.SideEffects != admissionv1.SideEffectClassNone ||
				w.TimeoutSeconds == nil || *w.TimeoutSeconds != 5 ||
				w.ReinvocationPolicy == nil || *w.ReinvocationPolicy != admissionv1.NeverReinvocationPolicy ||
				!slices.Equal(w.AdmissionReviewVersions, []string{"v1"}) {
				t.Errorf("sideEffects %v timeout %v reinvocation %v versions %v; want None, 5, Never, [v1]", w.SideEffects, w.TimeoutSeconds, w.ReinvocationPolicy, w.AdmissionReviewVersions)
			}
			if len(w.Rules) != 1 || !slices.Equal(w.Rules[0].Operations, []admissionv1.OperationType{admissionv1.Create}) ||
				!slices.Equal(w.Rules[0].Resources, []string{"pods"}) || !slices.Equal(w.Rules[0].APIGroups, []string{""}) {
				t.Errorf("rules %+v; want Pod CREATE only", w.Rules)
			}
			sel := selector(t, w.NamespaceSelector)
			for _, n := range c.sent {
				if !sel.Matches(nsLabels(n.name, n.labels)) {
					t.Errorf("namespace %s %v is not sent; want it sent", n.name, n.labels)
				}
			}
			for _, n := range c.notSent {
				if sel.Matches(nsLabels(n.name, n.labels)) {
					t.Errorf("namespace %s %v is sent; want it never sent", n.name, n.labels)
				}
			}
			pods := selector(t, w.ObjectSelector)
			if pods.Matches(labels.Set{"mesh.dev/inject": "disabled"}) || !pods.Matches(labels.Set{"app": "web"}) {
				t.Errorf("objectSelector %v: want every pod but those labelled mesh.dev/inject=disabled", w.ObjectSelector)
			}
		})
	}
}

// TestPolicyWebhook: the validation webhook's contract.
func TestPolicyWebhook(t *testing.T) {
	for _, c := range []struct {
		file string
		want admissionv1.FailurePolicyType
	}{{"", admissionv1.Fail}, {fullValues, admissionv1.Ignore}} {
		o := decode(t, mustRender(t, c.file))
		if len(o.validating) != 1 || o.validating[0].Name != "mesh-policy-validator" || len(o.validating[0].Webhooks) != 1 {
			t.Fatalf("want one ValidatingWebhookConfiguration mesh-policy-validator with one webhook: %+v", o.validating)
		}
		w := o.validating[0].Webhooks[0]
		checkClient(t, w.Name, w.ClientConfig, "policy.mesh.dev", "/validate-policy")
		if w.FailurePolicy == nil || *w.FailurePolicy != c.want {
			t.Errorf("%q: failurePolicy %v; want %s", c.file, w.FailurePolicy, c.want)
		}
		if len(w.Rules) != 1 || !slices.Equal(w.Rules[0].APIGroups, []string{"security.mesh.dev"}) ||
			!slices.Equal(w.Rules[0].Resources, []string{"authorizationpolicies"}) ||
			!slices.Equal(w.Rules[0].Operations, []admissionv1.OperationType{admissionv1.Create, admissionv1.Update}) {
			t.Errorf("rules %+v; want authorizationpolicies.security.mesh.dev CREATE and UPDATE", w.Rules)
		}
		if w.SideEffects == nil || *w.SideEffects != admissionv1.SideEffectClassNone || w.TimeoutSeconds == nil || *w.TimeoutSeconds != 5 {
			t.Errorf("sideEffects %v timeout %v; want None and 5", w.SideEffects, w.TimeoutSeconds)
		}
	}
}

func checkClient(t *testing.T, name string, cc admissionv1.WebhookClientConfig, wantName, wantPath string) {
	t.Helper()
	if name != wantName {
		t.Errorf("webhook %q; want %q", name, wantName)
	}
	s := cc.Service
	if s == nil || s.Name != "mesh-webhook" || s.Namespace != releaseNS || s.Path == nil || *s.Path != wantPath || s.Port == nil || *s.Port != 443 {
		t.Errorf("%s clientConfig %+v; want Service mesh-webhook.%s:443%s", name, s, releaseNS, wantPath)
	}
	if cc.URL != nil || len(cc.CABundle) != 0 {
		t.Errorf("%s: url %v caBundle %d bytes; want neither (the controller fills caBundle)", name, cc.URL, len(cc.CABundle))
	}
}

func selector(t *testing.T, s *metav1.LabelSelector) labels.Selector {
	t.Helper()
	if s == nil {
		t.Fatal("no selector")
	}
	sel, err := metav1.LabelSelectorAsSelector(s)
	if err != nil {
		t.Fatalf("selector %v: %v", s, err)
	}
	return sel
}

// nsLabels are a namespace's labels as the API server has them, with the
// immutable kubernetes.io/metadata.name it sets on every namespace.
func nsLabels(name string, l map[string]string) labels.Set {
	set := labels.Set{"kubernetes.io/metadata.name": name}
	for k, v := range l {
		set[k] = v
	}
	return set
}

// TestUpgradeKeepsCABundle: helm upgrade patches a webhook configuration
// with a three-way strategic merge of the old manifest, the new one and the
// live object (helm's pkg/kube createPatch, reproduced here with the same
// call). The controller's caBundle is in neither manifest, so the patch
// keeps it while the upgrade's own change goes through.
func TestUpgradeKeepsCABundle(t *testing.T) {
	caBundle := []byte("-----BEGIN CERTIFICATE-----\nset by the controller\n-----END CERTIFICATE-----\n")
	manifest := func(sets ...string) []byte {
		o := decode(t, mustRender(t, "", sets...))
		b, err := json.Marshal(o.mutating[0])
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	oldData, newData := manifest(), manifest("injector.failurePolicy=Fail")
	var live admissionv1.MutatingWebhookConfiguration
	if err := json.Unmarshal(oldData, &live); err != nil {
		t.Fatal(err)
	}
	live.Webhooks[0].ClientConfig.CABundle = caBundle
	live.ResourceVersion = "42"
	liveData, err := json.Marshal(&live)
	if err != nil {
		t.Fatal(err)
	}
	meta, err := strategicpatch.NewPatchMetaFromStruct(&admissionv1.MutatingWebhookConfiguration{})
	if err != nil {
		t.Fatal(err)
	}
	patch, err := strategicpatch.CreateThreeWayMergePatch(oldData, newData, liveData, meta, true)
	if err != nil {
		t.Fatal(err)
	}
	patched, err := strategicpatch.StrategicMergePatch(liveData, patch, &admissionv1.MutatingWebhookConfiguration{})
	if err != nil {
		t.Fatal(err)
	}
	var got admissionv1.MutatingWebhookConfiguration
	if err := json.Unmarshal(patched, &got); err != nil {
		t.Fatal(err)
	}
	if len(got.Webhooks) != 1 || !bytes.Equal(got.Webhooks[0].ClientConfig.CABundle, caBundle) {
		t.Errorf("helm upgrade's patch %s loses the controller's caBundle", patch)
	}
	if len(got.Webhooks) == 1 && (got.Webhooks[0].FailurePolicy == nil || *got.Webhooks[0].FailurePolicy != admissionv1.Fail) {
		t.Errorf("helm upgrade's patch %s does not apply the new failurePolicy", patch)
	}
}
