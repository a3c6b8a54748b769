package inventory

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	corev1 "k8s.io/api/core/v1"

	"github.com/mesh-dev/mesh/identity/meshid"
)

// ProxyContainer is the name of mesh's sidecar: a pod with a container or
// (native sidecar) init container of this name is meshed.
const ProxyContainer = "mesh-proxy"

// OpaquePortsAnnotation lists, comma-separated, the pod's ports that are
// never inspected for HTTP (server-first protocols).
const OpaquePortsAnnotation = "mesh.dev/opaque-ports"

// Meshed reports whether pod runs mesh's proxy.
func Meshed(pod *corev1.Pod) bool {
	if pod.Spec.HostNetwork {
		// A host-network pod shares the node's address: the proxy could
		// not intercept it, and its address names no one workload.
		return false
	}
	for _, c := range pod.Spec.InitContainers {
		if c.Name == ProxyContainer {
			return true
		}
	}
	for _, c := range pod.Spec.Containers {
		if c.Name == ProxyContainer {
			return true
		}
	}
	return false
}

// Live reports whether pod may run: scheduled, not finished. A pod being
// deleted is still live until it is gone, so its connections drain.
func Live(pod *corev1.Pod) bool {
	return pod.Spec.NodeName != "" && pod.Status.Phase != corev1.PodSucceeded && pod.Status.Phase != corev1.PodFailed
}

// Identity is the SPIFFE ID the CA issues pod's proxy: its ServiceAccount's.
func Identity(td spiffeid.TrustDomain, pod *corev1.Pod) (spiffeid.ID, error) {
	sa := pod.Spec.ServiceAccountName
	if sa == "" {
		sa = "default"
	}
	return meshid.ForServiceAccount(td, pod.Namespace, sa)
}

// ContainerPorts maps pod's named container ports to their numbers, for
// policies that name ports.
func ContainerPorts(pod *corev1.Pod) map[string]uint16 {
	m := map[string]uint16{}
	add := func(cs []corev1.Container) {
		for _, c := range cs {
			for _, p := range c.Ports {
				if p.Name != "" && p.Protocol != corev1.ProtocolUDP && p.Protocol != corev1.ProtocolSCTP {
					m[p.Name] = uint16(p.ContainerPort)
				}
			}
		}
	}
	add(pod.Spec.InitContainers)
	add(pod.Spec.Containers)
	return m
}

// OpaquePorts is the pod's mesh.dev/opaque-ports annotation; entries that
// are not ports are ignored (the injector validates the annotation).
func OpaquePorts(pod *corev1.Pod) []uint32 {
	var ports []uint32
	for _, s := range strings.Split(pod.Annotations[OpaquePortsAnnotation], ",") {
		if n, err := strconv.ParseUint(strings.TrimSpace(s), 10, 16); err == nil && n > 0 {
			ports = append(ports, uint32(n))
		}
	}
	return ports
}

// Service annotations for the callers' proxies: how long a request to the
// Service may take, and how long connecting to one of its endpoints, as Go
// durations ("2s", "1500ms").
const (
	RequestTimeoutAnnotation = "mesh.dev/request-timeout"
	ConnectTimeoutAnnotation = "mesh.dev/connect-timeout"
)

// maxTimeout bounds the annotations: a larger value is almost certainly a
// unit mistake, and it must fit the message's milliseconds.
const maxTimeout = 24 * time.Hour

// Timeout reads a timeout annotation in milliseconds: zero when absent; an
// error naming the annotation when it is not a positive duration of at
// most a day.
func Timeout(annotations map[string]string, name string) (uint32, error) {
	v, ok := annotations[name]
	if !ok {
		return 0, nil
	}
	d, err := time.ParseDuration(strings.TrimSpace(v))
	if err != nil {
		return 0, fmt.Errorf("inventory: annotation %s: %q is not a duration such as 2s or 500ms", name, v)
	}
	if d < time.Millisecond || d > maxTimeout {
		return 0, fmt.Errorf("inventory: annotation %s: %s is outside 1ms..24h", name, d)
	}
	return uint32(d.Milliseconds()), nil
}
