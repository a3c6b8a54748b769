package meshcontroller

import (
	"context"
	"fmt"
	"log/slog"
	"net"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"

	"github.com/mesh-dev/mesh/ca"
	"github.com/mesh-dev/mesh/identity/meshid"
	"github.com/mesh-dev/mesh/inject"
	"github.com/mesh-dev/mesh/webhook"
)

// webhookSettings are the webhook flags, checked before anything starts.
type webhookSettings struct {
	injector             *inject.Injector
	dnsNames             []string
	ips                  []net.IP
	mutating, validating string
}

// webhookSettings checks the webhook flags and loads the injector's
// config; nil when --webhook-addr is "-".
func (o options) webhookSettings(td spiffeid.TrustDomain) (*webhookSettings, error) {
	if o.webhookAddr == "-" {
		return nil, nil
	}
	if o.webhookService == "" {
		return nil, fmt.Errorf("--webhook-service is required with --webhook-addr")
	}
	cfg, err := inject.LoadConfig(o.injectorConfig)
	if err != nil {
		return nil, fmt.Errorf("--injector-config: %w", err)
	}
	ctlID, err := meshid.ForServiceAccount(td, o.namespace, o.serviceAccount)
	if err != nil {
		return nil, err
	}
	in, err := inject.New(cfg, inject.Mesh{TrustDomain: td, ControllerID: ctlID, Namespace: o.namespace, Version: Version})
	if err != nil {
		return nil, fmt.Errorf("--injector-config %s: %w", o.injectorConfig, err)
	}
	svc := o.webhookService + "." + o.namespace + ".svc"
	s := &webhookSettings{injector: in, dnsNames: []string{svc, svc + ".cluster.local"}, mutating: o.mutatingWebhook, validating: o.validatingWebhook}
	for _, san := range o.webhookExtraSANs {
		if ip := net.ParseIP(san); ip != nil {
			s.ips = append(s.ips, ip)
		} else {
			s.dnsNames = append(s.dnsNames, san)
		}
	}
	return s, nil
}

// newWebhookServer builds the webhook server: namespace labels come from
// the shared informer, or from the API for a namespace created a moment
// ago and not yet in the cache.
func newWebhookServer(s *webhookSettings, authority *ca.CA, kube kubernetes.Interface, factory informers.SharedInformerFactory, log *slog.Logger, reg prometheus.Registerer) (*webhook.Server, error) {
	nsLister := factory.Core().V1().Namespaces().Lister()
	labels := func(ctx context.Context, name string) (map[string]string, error) {
		if ns, err := nsLister.Get(name); err == nil {
			return ns.Labels, nil
		}
		ns, err := kube.CoreV1().Namespaces().Get(ctx, name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return nil, nil
		}
		if err != nil {
			return nil, err
		}
		return ns.Labels, nil
	}
	return webhook.New(webhook.Config{
		CA: authority, DNSNames: s.dnsNames, IPs: s.ips, Injector: s.injector, NamespaceLabels: labels,
		Kube: kube, MutatingWebhook: s.mutating, ValidatingWebhook: s.validating,
		Logger: log, Registerer: reg,
	})
}
