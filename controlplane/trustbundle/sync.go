package trustbundle

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"

	"github.com/mesh-dev/mesh/controlplane/inventory"
)

var everything = labels.Everything()

// sync makes namespace ns's ConfigMap match the bundle, if ns should have
// one. An error means try again later.
func (p *Publisher) sync(ctx context.Context, ns string) error {
	namespace, err := p.nsLister.Get(ns)
	switch {
	case apierrors.IsNotFound(err):
		// Not created yet (a configured namespace; its Add queues it again)
		// or gone.
		return nil
	case err != nil:
		return fmt.Errorf("trustbundle: namespace %s: %w", ns, err)
	case namespace.DeletionTimestamp != nil || namespace.Status.Phase == corev1.NamespaceTerminating:
		return nil // the API server refuses new objects in it
	case !p.wanted(namespace):
		return nil
	}
	roots := p.cfg.Bundle.Bundle()
	data, err := encode(roots)
	if err != nil {
		// Not retried: nothing here can fix it, and the next bundle change
		// queues the namespace again.
		p.metrics.writes.WithLabelValues(resultBad).Inc()
		p.log.Error("not publishing the trust bundle: the bundle source gave a bad bundle (a bug upstream)", "namespace", ns, "err", err)
		return nil
	}
	cm, err := p.cmLister.ConfigMaps(ns).Get(ConfigMapName)
	if apierrors.IsNotFound(err) {
		cm = nil
	} else if err != nil {
		return fmt.Errorf("trustbundle: ConfigMap %s/%s: %w", ns, ConfigMapName, err)
	}
	if cm != nil && current(cm, data) {
		return nil
	}
	result, err := p.write(ctx, ns, cm, data)
	if err != nil && ctx.Err() != nil {
		return err // shutting down: not a failure of the write
	}
	p.metrics.writes.WithLabelValues(result).Inc()
	switch {
	case err != nil && result == resultConflict:
		p.log.Debug("trust bundle ConfigMap changed under us; retrying", "namespace", ns, "err", err)
	case err != nil:
		p.log.Error("writing the trust bundle ConfigMap failed; retrying", "namespace", ns, "err", err)
	default:
		p.log.Info("published the trust bundle", "namespace", ns, "action", result, "roots", len(roots))
	}
	return err
}

// write creates, updates or replaces ns's ConfigMap (cm, nil if absent) to
// hold data. It returns the metric result and an error to retry on.
func (p *Publisher) write(ctx context.Context, ns string, cm *corev1.ConfigMap, data string) (string, error) {
	api := p.cfg.Kube.CoreV1().ConfigMaps(ns)
	if cm != nil && cm.Immutable != nil && *cm.Immutable {
		// An immutable ConfigMap cannot be updated: delete exactly the
		// version we read and create ours.
		uid, rv := cm.UID, cm.ResourceVersion
		err := api.Delete(ctx, ConfigMapName, metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: &uid, ResourceVersion: &rv}})
		if err != nil && !apierrors.IsNotFound(err) {
			return failure(fmt.Errorf("trustbundle: delete immutable ConfigMap %s/%s: %w", ns, ConfigMapName, err))
		}
		if _, err := api.Create(ctx, desired(ns, cm, data), metav1.CreateOptions{}); err != nil {
			return failure(fmt.Errorf("trustbundle: create ConfigMap %s/%s after deleting an immutable one: %w", ns, ConfigMapName, err))
		}
		return resultReplaced, nil
	}
	if cm == nil {
		if _, err := api.Create(ctx, desired(ns, nil, data), metav1.CreateOptions{}); err != nil {
			return failure(fmt.Errorf("trustbundle: create ConfigMap %s/%s: %w", ns, ConfigMapName, err))
		}
		return resultCreated, nil
	}
	// The cached version's resourceVersion makes the update fail, not
	// overwrite, if the cache is behind.
	if _, err := api.Update(ctx, desired(ns, cm, data), metav1.UpdateOptions{}); err != nil {
		return failure(fmt.Errorf("trustbundle: update ConfigMap %s/%s: %w", ns, ConfigMapName, err))
	}
	return resultUpdated, nil
}

// failure classifies a write's error: a conflict or an existing object
// means the cache was behind, which the retry resolves.
func failure(err error) (string, error) {
	if apierrors.IsConflict(err) || apierrors.IsAlreadyExists(err) {
		return resultConflict, err
	}
	return resultError, err
}

// desired is the ConfigMap ns should have: cur (nil if none) with our
// label, exactly our one key, and mutable. Other labels and annotations
// are left as they are.
func desired(ns string, cur *corev1.ConfigMap, data string) *corev1.ConfigMap {
	cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: ConfigMapName, Namespace: ns}}
	if cur != nil && (cur.Immutable == nil || !*cur.Immutable) {
		cm = cur.DeepCopy()
	} else if cur != nil {
		// Replacing an immutable one: a new object, keeping its labels and
		// annotations.
		cm.Labels, cm.Annotations = maps.Clone(cur.Labels), maps.Clone(cur.Annotations)
	}
	if cm.Labels == nil {
		cm.Labels = map[string]string{}
	}
	cm.Labels[ManagedByLabel] = ManagedBy
	cm.Data = map[string]string{Key: data}
	cm.BinaryData = nil
	cm.Immutable = nil
	return cm
}

// current reports whether cm is exactly what desired would write.
func current(cm *corev1.ConfigMap, data string) bool {
	return cm.Labels[ManagedByLabel] == ManagedBy &&
		len(cm.Data) == 1 && cm.Data[Key] == data &&
		len(cm.BinaryData) == 0 &&
		(cm.Immutable == nil || !*cm.Immutable)
}

// wanted reports whether namespace ns should have the ConfigMap: it is
// configured, labelled for injection, has a meshed pod, or already has a
// ConfigMap of ours (which is never deleted, so it is kept current).
func (p *Publisher) wanted(ns *corev1.Namespace) bool {
	if slices.Contains(p.cfg.Namespaces, ns.Name) || ns.Labels[InjectLabel] == InjectEnabled {
		return true
	}
	if cm, err := p.cmLister.ConfigMaps(ns.Name).Get(ConfigMapName); err == nil && cm.Labels[ManagedByLabel] == ManagedBy {
		return true
	}
	pods, err := p.podLister.Pods(ns.Name).List(everything)
	if err != nil {
		return false // a lister reads memory and only fails on a bad selector
	}
	return slices.ContainsFunc(pods, inventory.Meshed)
}

// encode is the bundle as the ConfigMap holds it: each root as a PEM
// CERTIFICATE block, in order. A bundle with no roots, or a nil or empty
// certificate, is refused: publishing it would cut new proxies off.
func encode(roots []*x509.Certificate) (string, error) {
	if len(roots) == 0 {
		return "", errors.New("trustbundle: the bundle has no roots")
	}
	var b strings.Builder
	for i, c := range roots {
		if c == nil || len(c.Raw) == 0 {
			return "", fmt.Errorf("trustbundle: root %d of %d has no DER", i+1, len(roots))
		}
		if err := pem.Encode(&b, &pem.Block{Type: "CERTIFICATE", Bytes: c.Raw}); err != nil {
			return "", fmt.Errorf("trustbundle: encode root %d: %w", i+1, err)
		}
	}
	return b.String(), nil
}
