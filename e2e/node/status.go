package node

import (
	"context"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/util/retry"
)

// report writes the pod's status as a kubelet would: phase, addresses,
// conditions and the containers' states. The pod is Ready when every main
// container and every native sidecar is.
func (r *podRun) report(ctx context.Context) {
	r.dirty = false
	rt := r.rt
	ready := len(r.mains) > 0
	for _, c := range r.mains {
		ready = ready && c.status.Ready
	}
	for _, c := range r.inits {
		if c.kind == sidecarKind {
			ready = ready && c.status.Ready
		}
	}
	statuses := make([]corev1.ContainerStatus, len(r.mains))
	for i, c := range r.mains {
		statuses[i] = *c.status.DeepCopy()
	}
	initStatuses := make([]corev1.ContainerStatus, len(r.inits))
	for i, c := range r.inits {
		initStatuses[i] = *c.status.DeepCopy()
	}
	phase := r.phase()
	want := map[corev1.PodConditionType]bool{
		corev1.PodScheduled: true, corev1.PodInitialized: r.launched,
		corev1.ContainersReady: ready, corev1.PodReady: ready,
	}
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		cur, err := r.n.cfg.Kube.CoreV1().Pods(rt.obj.Namespace).Get(ctx, rt.obj.Name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		if cur.UID != rt.obj.UID {
			return nil // a new pod of the same name: not this one's status
		}
		cur.Status.Phase = phase
		cur.Status.HostIP = NodeIP
		cur.Status.HostIPs = []corev1.HostIP{{IP: NodeIP}}
		cur.Status.PodIP = rt.ip.String()
		cur.Status.PodIPs = []corev1.PodIP{{IP: rt.ip.String()}}
		if cur.Status.StartTime == nil {
			now := metav1.Now()
			cur.Status.StartTime = &now
		}
		cur.Status.Conditions = conditions(cur.Status.Conditions, want)
		cur.Status.ContainerStatuses = statuses
		cur.Status.InitContainerStatuses = initStatuses
		_, err = r.n.cfg.Kube.CoreV1().Pods(cur.Namespace).UpdateStatus(ctx, cur, metav1.UpdateOptions{})
		return err
	})
	if err != nil && ctx.Err() == nil && !apierrors.IsNotFound(err) {
		r.log.Warn("pod status", "err", err)
	}
}

// conditions sets the pod conditions the agent owns, keeping the
// transition time of those whose status did not change and the conditions
// others own (DisruptionTarget, readiness gates).
func conditions(cur []corev1.PodCondition, want map[corev1.PodConditionType]bool) []corev1.PodCondition {
	now := metav1.Now()
	out := make([]corev1.PodCondition, 0, len(cur)+len(want))
	seen := map[corev1.PodConditionType]bool{}
	status := func(ok bool) corev1.ConditionStatus {
		if ok {
			return corev1.ConditionTrue
		}
		return corev1.ConditionFalse
	}
	for _, c := range cur {
		if ok, mine := want[c.Type]; mine {
			seen[c.Type] = true
			if c.Status != status(ok) {
				c.Status, c.LastTransitionTime = status(ok), now
			}
		}
		out = append(out, c)
	}
	for _, t := range []corev1.PodConditionType{corev1.PodScheduled, corev1.PodInitialized, corev1.ContainersReady, corev1.PodReady} {
		if !seen[t] {
			out = append(out, corev1.PodCondition{Type: t, Status: status(want[t]), LastTransitionTime: now})
		}
	}
	return out
}
