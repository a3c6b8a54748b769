package meshctl

import (
	"errors"
	"testing"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
)

// The cases TestCheckWebhookConfigs leaves out, each kind in turn: one
// configuration of the two, one with no webhooks, one the caller may not
// read. Both checks read them through webhookConfig.get.
func TestWebhookConfigEachKind(t *testing.T) {
	pem := []byte("-----BEGIN CERTIFICATE-----")
	both := webhooks(pem, pem)
	mutating, validating := both[0], both[1]
	forbid := func(resource string) func(*checkEnv, *fake.Clientset) {
		return func(_ *checkEnv, cs *fake.Clientset) {
			cs.PrependReactor("get", resource, func(k8stesting.Action) (bool, runtime.Object, error) {
				return true, nil, apierrors.NewForbidden(admissionregistrationv1.Resource(resource), "x", errors.New("no RBAC"))
			})
		}
	}
	for _, tc := range []struct {
		run   func(*checkEnv, *fake.Clientset)
		check checkCase
		pre   checkCase
	}{
		{nil,
			checkCase{"only the injector", []runtime.Object{mutating}, nil, ResultError, "ValidatingWebhookConfiguration mesh-policy-validator not found"},
			checkCase{"only the injector", []runtime.Object{mutating}, nil, ResultError, "MutatingWebhookConfiguration mesh-injector already exists"}},
		{nil,
			checkCase{"only the validator", []runtime.Object{validating}, nil, ResultError, "MutatingWebhookConfiguration mesh-injector not found"},
			checkCase{"only the validator", []runtime.Object{validating}, nil, ResultError, "ValidatingWebhookConfiguration mesh-policy-validator already exists"}},
		{nil,
			checkCase{"an injector without webhooks", []runtime.Object{&admissionregistrationv1.MutatingWebhookConfiguration{ObjectMeta: metav1.ObjectMeta{Name: mutatingWebhook}}, validating}, nil, ResultError, "mesh-injector has no webhooks"},
			checkCase{"an injector without webhooks", []runtime.Object{&admissionregistrationv1.MutatingWebhookConfiguration{ObjectMeta: metav1.ObjectMeta{Name: mutatingWebhook}}}, nil, ResultError, "MutatingWebhookConfiguration mesh-injector already exists"}},
		{nil,
			checkCase{"a validator without webhooks", []runtime.Object{mutating, &admissionregistrationv1.ValidatingWebhookConfiguration{ObjectMeta: metav1.ObjectMeta{Name: validatingWebhook}}}, nil, ResultError, "mesh-policy-validator has no webhooks"},
			checkCase{"a validator without webhooks", []runtime.Object{&admissionregistrationv1.ValidatingWebhookConfiguration{ObjectMeta: metav1.ObjectMeta{Name: validatingWebhook}}}, nil, ResultError, "ValidatingWebhookConfiguration mesh-policy-validator already exists"}},
		{forbid("mutatingwebhookconfigurations"),
			checkCase{"the injector forbidden", both, nil, ResultError, `get MutatingWebhookConfiguration mesh-injector: mutatingwebhookconfigurations.admissionregistration.k8s.io "x" is forbidden: no RBAC`},
			checkCase{"the injector forbidden", nil, nil, ResultError, `get MutatingWebhookConfiguration mesh-injector: mutatingwebhookconfigurations.admissionregistration.k8s.io "x" is forbidden`}},
		{forbid("validatingwebhookconfigurations"),
			checkCase{"the validator forbidden", both, nil, ResultError, `get ValidatingWebhookConfiguration mesh-policy-validator: validatingwebhookconfigurations.admissionregistration.k8s.io "x" is forbidden: no RBAC`},
			checkCase{"the validator forbidden", nil, nil, ResultError, `get ValidatingWebhookConfiguration mesh-policy-validator: validatingwebhookconfigurations.admissionregistration.k8s.io "x" is forbidden`}},
	} {
		runCase(t, checkWebhookConfigs, tc.check, tc.run)
		tc.pre.name = "--pre: " + tc.pre.name
		runCase(t, checkNoWebhooks, tc.pre, tc.run)
	}
	if _, _, err := (webhookConfig{"Secret", "x"}).get(t.Context(), fake.NewClientset()); err == nil {
		t.Error("webhookConfig.get of a Secret: no error")
	}
}
