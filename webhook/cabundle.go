package webhook

import (
	"bytes"
	"context"
	"encoding/pem"
	"errors"
	"fmt"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// bundlePEM is the CA's trust bundle as the caBundle field wants it.
func (s *Server) bundlePEM() []byte {
	var b bytes.Buffer
	for _, c := range s.cfg.CA.Bundle() {
		_ = pem.Encode(&b, &pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
	}
	return b.Bytes()
}

// syncBundles sets every webhook's caBundle in the named configurations
// to the CA's bundle, writing only when it differs. Failures are logged
// and retried at the next tick: the configurations may not exist yet
// (they come with the chart), and a conflict means another replica wrote.
func (s *Server) syncBundles(ctx context.Context) {
	if s.cfg.Kube == nil {
		return
	}
	want := s.bundlePEM()
	if s.cfg.MutatingWebhook != "" {
		changed, err := s.syncMutating(ctx, want)
		s.report("MutatingWebhookConfiguration", s.cfg.MutatingWebhook, changed, err)
	}
	if s.cfg.ValidatingWebhook != "" {
		changed, err := s.syncValidating(ctx, want)
		s.report("ValidatingWebhookConfiguration", s.cfg.ValidatingWebhook, changed, err)
	}
}

func (s *Server) report(kind, name string, changed bool, err error) {
	switch {
	case apierrors.IsNotFound(err):
		s.cfg.Logger.Debug("webhook configuration not found; caBundle not set", "kind", kind, "name", name)
	case apierrors.IsConflict(err):
		s.cfg.Logger.Debug("webhook configuration changed meanwhile; caBundle retried at the next check", "kind", kind, "name", name)
	case errors.Is(err, context.Canceled):
	case err != nil:
		s.m.bundleUpdates.WithLabelValues(kind, "error").Inc()
		s.cfg.Logger.Error("setting caBundle", "kind", kind, "name", name, "err", err)
	case changed:
		s.m.bundleUpdates.WithLabelValues(kind, "updated").Inc()
		s.cfg.Logger.Info("caBundle set to the mesh trust bundle", "kind", kind, "name", name, "roots", len(s.cfg.CA.Bundle()))
	}
}

func (s *Server) syncMutating(ctx context.Context, want []byte) (bool, error) {
	return syncCABundles(ctx, s.cfg.Kube.AdmissionregistrationV1().MutatingWebhookConfigurations(), s.cfg.MutatingWebhook, want,
		func(c *admissionregistrationv1.MutatingWebhookConfiguration) []*admissionregistrationv1.WebhookClientConfig {
			out := make([]*admissionregistrationv1.WebhookClientConfig, len(c.Webhooks))
			for i := range c.Webhooks {
				out[i] = &c.Webhooks[i].ClientConfig
			}
			return out
		})
}

func (s *Server) syncValidating(ctx context.Context, want []byte) (bool, error) {
	return syncCABundles(ctx, s.cfg.Kube.AdmissionregistrationV1().ValidatingWebhookConfigurations(), s.cfg.ValidatingWebhook, want,
		func(c *admissionregistrationv1.ValidatingWebhookConfiguration) []*admissionregistrationv1.WebhookClientConfig {
			out := make([]*admissionregistrationv1.WebhookClientConfig, len(c.Webhooks))
			for i := range c.Webhooks {
				out[i] = &c.Webhooks[i].ClientConfig
			}
			return out
		})
}

// webhookConfigs is the client of one kind of webhook configuration.
type webhookConfigs[T any] interface {
	Get(ctx context.Context, name string, opts metav1.GetOptions) (T, error)
	Update(ctx context.Context, obj T, opts metav1.UpdateOptions) (T, error)
}

// syncCABundles sets the caBundle of every webhook of configuration name
// to want, and updates it when one differed; it reports whether it did.
func syncCABundles[T any](ctx context.Context, api webhookConfigs[T], name string, want []byte, clientConfigs func(T) []*admissionregistrationv1.WebhookClientConfig) (bool, error) {
	cfg, err := api.Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return false, err
	}
	changed := false
	for _, cc := range clientConfigs(cfg) {
		if !bytes.Equal(cc.CABundle, want) {
			cc.CABundle, changed = want, true
		}
	}
	if !changed {
		return false, nil
	}
	if _, err := api.Update(ctx, cfg, metav1.UpdateOptions{}); err != nil {
		return false, fmt.Errorf("webhook: update %s: %w", name, err)
	}
	return true, nil
}
