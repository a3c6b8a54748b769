package meshctl

import (
	"context"
	"fmt"
	"sort"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// proxyReaders bounds how many proxies meshctl asks at once through the
// API server.
const proxyReaders = 8

// meshedPods lists the running meshed pods of every namespace: those with
// a proxy container and an IP, not being deleted. Pods not yet running
// are left out: they start with the trust bundle current when they start.
func meshedPods(ctx context.Context, cs kubernetes.Interface) ([]corev1.Pod, error) {
	list, err := cs.CoreV1().Pods(metav1.NamespaceAll).List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("list pods: %w", err)
	}
	var pods []corev1.Pod
	for _, p := range list.Items {
		if _, meshed := adminPort(&p); meshed && p.DeletionTimestamp == nil && p.Status.Phase == corev1.PodRunning && p.Status.PodIP != "" {
			pods = append(pods, p)
		}
	}
	return pods, nil
}

// readProxies reads every pod's /identity, a few at a time, sorted by
// namespace and name.
func readProxies(ctx context.Context, cs kubernetes.Interface, pods []corev1.Pod, now time.Time) []PodIdentity {
	out := make([]PodIdentity, len(pods))
	eachProxy(ctx, pods, func(ctx context.Context, i int) { out[i] = readIdentity(ctx, cs, &pods[i], now) })
	sort.Slice(out, func(i, j int) bool {
		if out[i].Namespace != out[j].Namespace {
			return out[i].Namespace < out[j].Namespace
		}
		return out[i].Pod < out[j].Pod
	})
	return out
}
