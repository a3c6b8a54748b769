package webhook

import (
	"bytes"
	"context"
	"encoding/pem"
	"errors"
	"fmt"

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
	api := s.cfg.Kube.AdmissionregistrationV1().MutatingWebhookConfigurations()
	cfg, err := api.Get(ctx, s.cfg.MutatingWebhook, metav1.GetOptions{})
	if err != nil {
		return false, err
	}
	changed := false
	for i := range cfg.Webhooks {
		if !bytes.Equal(cfg.Webhooks[i].ClientConfig.CABundle, want) {
			cfg.Webhooks[i].ClientConfig.CABundle, changed = want, true
		}
	}
	if !changed {
		return false, nil
	}
	if _, err := api.Update(ctx, cfg, metav1.UpdateOptions{}); err != nil {
		return false, fmt.Errorf("webhook: update %s: %w", s.cfg.MutatingWebhook, err)
	}
	return true, nil
}

func (s *Server) syncValidating(ctx context.Context, want []byte) (bool, error) {
	api := s.cfg.Kube.AdmissionregistrationV1().ValidatingWebhookConfigurations()
	cfg, err := api.Get(ctx, s.cfg.ValidatingWebhook, metav1.GetOptions{})
	if err != nil {
		return false, err
	}
	changed := false
	for i := range cfg.Webhooks {
		if !bytes.Equal(cfg.Webhooks[i].ClientConfig.CABundle, want) {
			cfg.Webhooks[i].ClientConfig.CABundle, changed = want, true
		}
	}
	if !changed {
		return false, nil
	}
	if _, err := api.Update(ctx, cfg, metav1.UpdateOptions{}); err != nil {
		return false, fmt.Errorf("webhook: update %s: %w", s.cfg.ValidatingWebhook, err)
	}
	return true, nil
}
