package inject

import (
	"encoding/json"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/mesh-dev/mesh/internal/intorstr"
	"github.com/mesh-dev/mesh/proxy/probe"
)

// probeKinds are a container's probes, by the path segment the proxy
// serves each under.
var probeKinds = []struct {
	name string
	get  func(*corev1.Container) **corev1.Probe
	json string
}{
	{"livez", func(c *corev1.Container) **corev1.Probe { return &c.LivenessProbe }, "livenessProbe"},
	{"readyz", func(c *corev1.Container) **corev1.Probe { return &c.ReadinessProbe }, "readinessProbe"},
	{"startupz", func(c *corev1.Container) **corev1.Probe { return &c.StartupProbe }, "startupProbe"},
}

// rewrite is one probe to replace.
type rewrite struct {
	field string        // JSON field of the container: readinessProbe...
	probe *corev1.Probe // the replacement
}

// rewriteProbes turns c's HTTP, TCP and gRPC probes into GETs on the
// proxy's admin port and records the originals in probers. A probe that
// cannot be rewritten (a named port the container does not declare, a
// host other than the pod, an original the proxy would refuse) is left as
// written, with a warning: the kubelet then probes it as without the mesh.
func rewriteProbes(c *corev1.Container, adminPort int32, probers probe.Probers) (rewrites []rewrite, warnings []string) {
	for _, kind := range probeKinds {
		p := *kind.get(c)
		if p == nil {
			continue
		}
		orig, why := original(c, p, adminPort)
		if orig == nil {
			if why != "" {
				warnings = append(warnings, fmt.Sprintf("container %s: %s not rewritten: %s", c.Name, kind.json, why))
			}
			continue
		}
		path := fmt.Sprintf("/app-health/%s/%s", c.Name, kind.name)
		// The proxy refuses the whole map if one entry is bad, so each
		// entry is checked as the proxy will check it.
		one, err := json.Marshal(probe.Probers{path: *orig})
		if err == nil {
			_, err = probe.Parse(one)
		}
		if err != nil {
			warnings = append(warnings, fmt.Sprintf("container %s: %s not rewritten: %v", c.Name, kind.json, err))
			continue
		}
		probers[path] = *orig
		np := p.DeepCopy()
		np.ProbeHandler = corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: path, Port: intstr.FromInt32(adminPort), Scheme: corev1.URISchemeHTTP}}
		rewrites = append(rewrites, rewrite{field: kind.json, probe: np})
	}
	return rewrites, warnings
}

// original is the prober for p with named ports resolved, or nil and why
// not ("" for probes that need no rewriting: exec, or already the proxy's).
func original(c *corev1.Container, p *corev1.Probe, adminPort int32) (*probe.Prober, string) {
	out := &probe.Prober{TimeoutSeconds: p.TimeoutSeconds}
	switch {
	case p.HTTPGet != nil:
		h := httpGetAction(p.HTTPGet)
		if h.Host != "" {
			return nil, fmt.Sprintf("httpGet.host %q is set: the kubelet probes that host, not this pod", clip(h.Host))
		}
		port, why := resolve(c, p.HTTPGet.Port)
		if why != "" {
			return nil, why
		}
		if port == adminPort {
			return nil, "" // already the proxy's (rewritten before, or the proxy's own health)
		}
		h.Port = intorstr.FromInt32(port)
		if h.Path == "" {
			h.Path = "/" // the kubelet's default
		}
		out.HTTPGet = h
	case p.TCPSocket != nil:
		t := &probe.TCPSocketAction{Host: p.TCPSocket.Host}
		if t.Host != "" {
			return nil, fmt.Sprintf("tcpSocket.host %q is set: the kubelet probes that host, not this pod", clip(t.Host))
		}
		port, why := resolve(c, p.TCPSocket.Port)
		if why != "" {
			return nil, why
		}
		if port == adminPort {
			return nil, ""
		}
		t.Port = intorstr.FromInt32(port)
		out.TCPSocket = t
	case p.GRPC != nil:
		if p.GRPC.Port == adminPort {
			return nil, ""
		}
		out.GRPC = &probe.GRPCAction{Port: p.GRPC.Port, Service: clone(p.GRPC.Service), Mode: (*string)(clone(p.GRPC.Mode))}
	default:
		return nil, "" // exec: runs in the container, no network
	}
	return out, ""
}

// httpGetAction is h as the proxy reads it (probe.HTTPGetAction: the same
// fields and JSON, without k8s.io/api in the proxy).
func httpGetAction(h *corev1.HTTPGetAction) *probe.HTTPGetAction {
	// The port is resolved to a number apart (resolve); it is copied
	// here only for completeness.
	port := intorstr.IntOrString{Type: intorstr.Type(h.Port.Type), IntVal: h.Port.IntVal, StrVal: h.Port.StrVal}
	out := &probe.HTTPGetAction{Path: h.Path, Port: port, Host: h.Host, Scheme: string(h.Scheme), Protocol: (*string)(clone(h.Protocol))}
	for _, hd := range h.HTTPHeaders {
		out.HTTPHeaders = append(out.HTTPHeaders, probe.HTTPHeader{Name: hd.Name, Value: hd.Value})
	}
	return out
}

// clone is a copy of *p, or nil: the pod's probe is not shared with the
// proxy's.
func clone[T any](p *T) *T {
	if p == nil {
		return nil
	}
	v := *p
	return &v
}

// resolve turns a probe's port into a number, as the kubelet does: a
// name is looked up among the container's own ports.
func resolve(c *corev1.Container, port intstr.IntOrString) (int32, string) {
	if port.Type == intstr.Int {
		if port.IntVal < 1 || port.IntVal > 65535 {
			return 0, fmt.Sprintf("port %d is out of range", port.IntVal)
		}
		return port.IntVal, ""
	}
	for _, cp := range c.Ports {
		if cp.Name == port.StrVal && (cp.Protocol == "" || cp.Protocol == corev1.ProtocolTCP) {
			return cp.ContainerPort, ""
		}
	}
	return 0, fmt.Sprintf("named port %q is not a TCP port of the container", clip(port.StrVal))
}
