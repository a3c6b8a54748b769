package inject

import (
	"fmt"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"

	"github.com/mesh-dev/mesh/controlplane/inventory"
	"github.com/mesh-dev/mesh/controlplane/trustbundle"
	"github.com/mesh-dev/mesh/proxy"
	"github.com/mesh-dev/mesh/proxy/intercept"
)

// The pod annotations (and, for InjectKey, the label) the injector reads
// and writes.
const (
	// InjectKey, as a namespace label, a pod label or a pod annotation,
	// is enabled or disabled. A pod's own setting wins over its
	// namespace's.
	InjectKey = trustbundle.InjectLabel
	// SkipInboundPorts and SkipOutboundPorts list ports (comma-separated)
	// that iptables do not send to the proxy.
	SkipInboundPorts  = "mesh.dev/skip-inbound-ports"
	SkipOutboundPorts = "mesh.dev/skip-outbound-ports"
	// OpaquePorts lists inbound ports never inspected for HTTP.
	OpaquePorts = inventory.OpaquePortsAnnotation
	// InboundMode and OutboundMode override the configured modes: strict
	// or permissive.
	InboundMode  = "mesh.dev/inbound-mode"
	OutboundMode = "mesh.dev/outbound-mode"
	// Injected is written on injected pods; its value is mesh's version.
	Injected = "mesh.dev/injected"
)

// Setting values of InjectKey.
const (
	Enabled  = trustbundle.InjectEnabled
	Disabled = "disabled"
)

// PodError is a reason to refuse the pod: an annotation with a bad value,
// or a name the injector needs already taken. Its message names what is
// wrong, for the user who created the pod.
type PodError struct {
	// Field is the annotation, label or field at fault.
	Field string
	// Msg says what is wrong with it.
	Msg string
}

func (e *PodError) Error() string { return fmt.Sprintf("inject: %s: %s", e.Field, e.Msg) }

// settings are a pod's annotations, checked and parsed.
type settings struct {
	skipIn, skipOut, opaque []int
	inMode, outMode         proxy.Mode
}

// maxAnnotation bounds the values read: a port list is short.
const maxAnnotation = 4096

// wanted decides whether pod is to be injected: "" and true if so, else
// the reason it is skipped.
func wanted(pod *corev1.Pod, nsLabels map[string]string) (skip string, err error) {
	if pod.Spec.HostNetwork {
		return "hostNetwork pod: it shares the node's network, which iptables in the pod would change", nil
	}
	if inventory.Meshed(pod) {
		return "already has a mesh-proxy container", nil
	}
	label, hasLabel := pod.Labels[InjectKey]
	ann, hasAnn := pod.Annotations[InjectKey]
	if hasLabel && hasAnn && label != ann {
		return "", &PodError{Field: InjectKey, Msg: fmt.Sprintf("the pod's label says %q and its annotation %q", label, ann)}
	}
	own, hasOwn := ann, hasAnn
	if hasLabel {
		own, hasOwn = label, true
	}
	switch {
	case hasOwn && own == Enabled:
		return "", nil
	case hasOwn && own == Disabled:
		return "the pod has " + InjectKey + ": disabled", nil
	case hasOwn:
		return "", &PodError{Field: InjectKey, Msg: fmt.Sprintf("%q is not enabled or disabled", clip(own))}
	case nsLabels[InjectKey] == Enabled:
		return "", nil
	default:
		return "neither the pod nor its namespace has " + InjectKey + "=enabled", nil
	}
}

// parseSettings reads pod's mesh annotations with cfg's defaults.
func parseSettings(pod *corev1.Pod, cfg *Config) (*settings, error) {
	s := &settings{inMode: cfg.InboundMode, outMode: cfg.OutboundMode}
	ports := func(key string, into *[]int) error {
		v, ok := pod.Annotations[key]
		if !ok {
			return nil
		}
		if len(v) > maxAnnotation {
			return &PodError{Field: key, Msg: fmt.Sprintf("%d bytes, more than %d", len(v), maxAnnotation)}
		}
		p, err := intercept.ParsePorts(v)
		if err != nil {
			return &PodError{Field: key, Msg: strings.TrimPrefix(err.Error(), "intercept: ") + " (want comma-separated ports 1-65535)"}
		}
		slices.Sort(p)
		*into = slices.Compact(p)
		return nil
	}
	if err := ports(SkipInboundPorts, &s.skipIn); err != nil {
		return nil, err
	}
	if err := ports(SkipOutboundPorts, &s.skipOut); err != nil {
		return nil, err
	}
	if err := ports(OpaquePorts, &s.opaque); err != nil {
		return nil, err
	}
	for _, p := range s.skipIn {
		if p == int(cfg.InboundPort) || p == int(cfg.OutboundPort) {
			return nil, &PodError{Field: SkipInboundPorts, Msg: fmt.Sprintf("%d is one of the proxy's own ports", p)}
		}
	}
	mode := func(key string, into *proxy.Mode) error {
		v, ok := pod.Annotations[key]
		if !ok {
			return nil
		}
		if err := checkMode(proxy.Mode(v)); err != nil {
			return &PodError{Field: key, Msg: fmt.Sprintf("%q is not strict or permissive", clip(v))}
		}
		*into = proxy.Mode(v)
		return nil
	}
	if err := mode(InboundMode, &s.inMode); err != nil {
		return nil, err
	}
	if err := mode(OutboundMode, &s.outMode); err != nil {
		return nil, err
	}
	return s, nil
}

// clip shortens a value quoted back in an error: a denial message is not
// the place to echo a 256 KiB annotation.
func clip(s string) string {
	if len(s) > 64 {
		return s[:64] + "..."
	}
	return s
}

// joinPorts writes ports as intercept.ParsePorts reads them.
func joinPorts(ps []int) string {
	out := make([]string, len(ps))
	for i, p := range ps {
		out[i] = fmt.Sprint(p)
	}
	return strings.Join(out, ",")
}
