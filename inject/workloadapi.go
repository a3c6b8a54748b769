package inject

import (
	"fmt"
	"slices"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
)

// The SPIFFE Workload API shared with the app containers
// (mesh.dev/workload-api: enabled).
const (
	// WorkloadAPI, enabled or disabled, shares the proxy's SPIFFE
	// Workload API socket with the pod's containers.
	WorkloadAPI = "mesh.dev/workload-api"
	// WorkloadAPIDir is where the socket's emptyDir is mounted, in the
	// proxy and (read-only) in every app container.
	WorkloadAPIDir = "/run/spiffe/workload"
	// WorkloadAPISocket is the socket's path.
	WorkloadAPISocket = WorkloadAPIDir + "/socket"
	// EndpointSocketEnv is the variable SPIFFE clients (go-spiffe,
	// java-spiffe, py-spiffe, spiffe-helper) read the socket's address
	// from.
	EndpointSocketEnv = "SPIFFE_ENDPOINT_SOCKET"
	workloadAPIVolume = "mesh-workload-api"
)

// workloadAPIPlan is what mesh.dev/workload-api: enabled adds: the app
// containers to give the socket, and the UIDs the proxy lets in.
type workloadAPIPlan struct {
	apps []int // indices in spec.containers
	uids []int64
}

// planWorkloadAPI checks that pod can share the socket: every app
// container's UID must be declared, since the proxy admits callers by UID
// and the image's own user is unknown here; none may be the proxy's. It
// returns nil if the annotation does not ask for it.
func planWorkloadAPI(pod *corev1.Pod, cfg *Config) (*workloadAPIPlan, error) {
	v, ok := pod.Annotations[WorkloadAPI]
	switch {
	case !ok || v == Disabled:
		return nil, nil
	case v != Enabled:
		return nil, &PodError{Field: WorkloadAPI, Msg: fmt.Sprintf("%q is not enabled or disabled", clip(v))}
	}
	plan := &workloadAPIPlan{}
	for i, c := range pod.Spec.Containers {
		uid := runAsUser(pod, &c)
		if uid == nil {
			return nil, &PodError{Field: WorkloadAPI, Msg: fmt.Sprintf("container %s declares no runAsUser (container or pod securityContext): the proxy lets callers in by UID, and the image's user is unknown at admission", c.Name)}
		}
		if *uid == cfg.ProxyUID {
			return nil, &PodError{Field: WorkloadAPI, Msg: fmt.Sprintf("container %s runs as the proxy's UID %d", c.Name, *uid)}
		}
		for _, e := range c.Env {
			if e.Name == EndpointSocketEnv {
				return nil, &PodError{Field: WorkloadAPI, Msg: fmt.Sprintf("container %s already sets %s", c.Name, EndpointSocketEnv)}
			}
		}
		for _, m := range c.VolumeMounts {
			if m.MountPath == WorkloadAPIDir || strings.HasPrefix(WorkloadAPIDir, strings.TrimSuffix(m.MountPath, "/")+"/") {
				return nil, &PodError{Field: WorkloadAPI, Msg: fmt.Sprintf("container %s mounts %s at %s, over the socket's directory %s", c.Name, m.Name, m.MountPath, WorkloadAPIDir)}
			}
		}
		plan.apps = append(plan.apps, i)
		plan.uids = append(plan.uids, *uid)
	}
	slices.Sort(plan.uids)
	plan.uids = slices.Compact(plan.uids)
	return plan, nil
}

// runAsUser is c's effective runAsUser as declared: its own, else the
// pod's.
func runAsUser(pod *corev1.Pod, c *corev1.Container) *int64 {
	if c.SecurityContext != nil && c.SecurityContext.RunAsUser != nil {
		return c.SecurityContext.RunAsUser
	}
	if pod.Spec.SecurityContext != nil {
		return pod.Spec.SecurityContext.RunAsUser
	}
	return nil
}

// addToProxy gives the proxy the socket's directory and its flags.
func (w *workloadAPIPlan) addToProxy(c *corev1.Container) {
	if w == nil {
		return
	}
	uids := make([]string, len(w.uids))
	for i, u := range w.uids {
		uids[i] = strconv.FormatInt(u, 10)
	}
	c.Args = append(c.Args, "--workload-api-socket", WorkloadAPISocket, "--workload-api-uids", strings.Join(uids, ","))
	c.VolumeMounts = append(c.VolumeMounts, corev1.VolumeMount{Name: workloadAPIVolume, MountPath: WorkloadAPIDir})
}

// volumes is the socket's emptyDir: in memory, and small (it holds one
// socket).
func (w *workloadAPIPlan) volumes() []corev1.Volume {
	if w == nil {
		return nil
	}
	size := resource.MustParse("1Mi")
	return []corev1.Volume{{Name: workloadAPIVolume, VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{Medium: corev1.StorageMediumMemory, SizeLimit: &size}}}}
}

// patchApps mounts the directory read-only in every app container (an app
// cannot replace the proxy's socket with its own) and points
// SPIFFE_ENDPOINT_SOCKET at the socket.
func (w *workloadAPIPlan) patchApps(pod *corev1.Pod, p *patch) {
	if w == nil {
		return
	}
	for _, i := range w.apps {
		c := &pod.Spec.Containers[i]
		base := fmt.Sprintf("/spec/containers/%d", i)
		mount := corev1.VolumeMount{Name: workloadAPIVolume, MountPath: WorkloadAPIDir, ReadOnly: true}
		if len(c.VolumeMounts) == 0 {
			p.add(base+"/volumeMounts", []corev1.VolumeMount{mount})
		} else {
			p.add(base+"/volumeMounts/-", mount)
		}
		env := corev1.EnvVar{Name: EndpointSocketEnv, Value: "unix://" + WorkloadAPISocket}
		if len(c.Env) == 0 {
			p.add(base+"/env", []corev1.EnvVar{env})
		} else {
			p.add(base+"/env/-", env)
		}
	}
}
