package castatus

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
)

// ErrNotPublished means the namespace has no status ConfigMap: mesh is
// not installed there, or its leader has not written it yet.
var ErrNotPublished = errors.New("castatus: no CA status published")

// Get reads the published status from namespace.
func Get(ctx context.Context, kube kubernetes.Interface, namespace string) (*Document, error) {
	cm, err := kube.CoreV1().ConfigMaps(namespace).Get(ctx, ConfigMapName, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil, fmt.Errorf("%w: ConfigMap %s/%s not found (is mesh installed in %q? its leader writes it within seconds of starting)", ErrNotPublished, namespace, ConfigMapName, namespace)
	}
	if err != nil {
		return nil, fmt.Errorf("castatus: reading ConfigMap %s/%s: %w", namespace, ConfigMapName, err)
	}
	d, err := ParseDocument(cm.Data[StatusKey])
	if err != nil {
		return nil, fmt.Errorf("castatus: ConfigMap %s/%s: %w", namespace, ConfigMapName, err)
	}
	return d, nil
}

// Submit asks the leader in namespace to take step, and returns the
// request's id for Await.
func Submit(ctx context.Context, kube kubernetes.Interface, namespace string, step Step) (string, error) {
	if err := step.Valid(); err != nil {
		return "", fmt.Errorf("castatus: %w", err)
	}
	req := Request{ID: newID(), Step: step}
	val, err := json.Marshal(req)
	if err != nil {
		return "", err
	}
	patch, err := json.Marshal(map[string]any{"metadata": map[string]any{"annotations": map[string]string{RequestAnnotation: string(val)}}})
	if err != nil {
		return "", err
	}
	if _, err := kube.CoreV1().ConfigMaps(namespace).Patch(ctx, ConfigMapName, types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
		if apierrors.IsNotFound(err) {
			return "", fmt.Errorf("%w: ConfigMap %s/%s not found", ErrNotPublished, namespace, ConfigMapName)
		}
		return "", fmt.Errorf("castatus: asking for %s on ConfigMap %s/%s: %w", step, namespace, ConfigMapName, err)
	}
	return req.ID, nil
}

// Await waits until the leader answered request id and returns the status
// it published with the answer; a refused step is an error carrying the
// CA's reason.
func Await(ctx context.Context, kube kubernetes.Interface, namespace, id string) (*Document, error) {
	t := time.NewTicker(250 * time.Millisecond)
	defer t.Stop()
	for {
		d, err := Get(ctx, kube, namespace)
		if err == nil && d.LastRequest != nil && d.LastRequest.ID == id {
			if d.LastRequest.Error != "" {
				return d, fmt.Errorf("the controller refused %s: %s", d.LastRequest.Step, d.LastRequest.Error)
			}
			return d, nil
		}
		select {
		case <-ctx.Done():
			if err != nil {
				return nil, fmt.Errorf("castatus: waiting for the controller to take the step: %w (last read: %v)", ctx.Err(), err)
			}
			return nil, fmt.Errorf("castatus: waiting for the controller to take the step: %w (is a controller running and leading? meshctl check)", ctx.Err())
		case <-t.C:
		}
	}
}
