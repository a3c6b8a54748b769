package meshctl

import (
	"context"
	"fmt"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// webhookConfig names one of mesh's webhook configurations: check wants
// both, with a CA bundle in each webhook; check --pre wants neither.
type webhookConfig struct{ kind, name string }

// meshWebhookConfigs are the chart's, in the order the checks report them.
var meshWebhookConfigs = []webhookConfig{
	{"MutatingWebhookConfiguration", mutatingWebhook},
	{"ValidatingWebhookConfiguration", validatingWebhook},
}

// webhookCABundle is one webhook of a configuration and its CA bundle.
type webhookCABundle struct {
	name     string
	caBundle []byte
}

// get reads the configuration's webhooks; found is false when it does not
// exist.
func (c webhookConfig) get(ctx context.Context, kube kubernetes.Interface) (hooks []webhookCABundle, found bool, err error) {
	api := kube.AdmissionregistrationV1()
	switch c.kind {
	case "MutatingWebhookConfiguration":
		m, err := api.MutatingWebhookConfigurations().Get(ctx, c.name, metav1.GetOptions{})
		if err == nil {
			for _, w := range m.Webhooks {
				hooks = append(hooks, webhookCABundle{w.Name, w.ClientConfig.CABundle})
			}
		}
		return c.result(hooks, err)
	case "ValidatingWebhookConfiguration":
		v, err := api.ValidatingWebhookConfigurations().Get(ctx, c.name, metav1.GetOptions{})
		if err == nil {
			for _, w := range v.Webhooks {
				hooks = append(hooks, webhookCABundle{w.Name, w.ClientConfig.CABundle})
			}
		}
		return c.result(hooks, err)
	}
	return nil, false, fmt.Errorf("%s %s: not a webhook configuration kind", c.kind, c.name)
}

func (c webhookConfig) result(hooks []webhookCABundle, err error) ([]webhookCABundle, bool, error) {
	switch {
	case apierrors.IsNotFound(err):
		return nil, false, nil
	case err != nil:
		return nil, false, fmt.Errorf("get %s %s: %w", c.kind, c.name, err)
	}
	return hooks, true, nil
}
