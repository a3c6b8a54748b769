package inject

import (
	"encoding/json"
	"fmt"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/mesh-dev/mesh/controlplane/trustbundle"
	"github.com/mesh-dev/mesh/proxy/probe"
)

// The names the injector adds to a pod. A pod that already uses one (but
// has no mesh-proxy) is refused rather than half-injected.
const (
	InitContainer  = "mesh-init"
	ProxyContainer = "mesh-proxy" // inventory.ProxyContainer
	tokenVolume    = "mesh-token"
	bundleVolume   = "mesh-bundle"
	auditVolume    = "mesh-audit"
	lockVolume     = "mesh-xtables-lock"
)

// Where the proxy finds its files.
const (
	tokenDir  = "/var/run/secrets/mesh/tokens"
	tokenFile = "identity-token"
	bundleDir = "/run/mesh/bundle"
	auditDir  = "/run/mesh/audit"
	// tokenTTL is the projected token's lifetime; the kubelet renews it
	// at 80%.
	tokenTTL = 3600
)

// Injector mutates pods. It is safe for concurrent use.
type Injector struct {
	cfg  Config
	mesh Mesh
}

// New checks cfg, fills in its defaults and returns an Injector.
func New(cfg Config, mesh Mesh) (*Injector, error) {
	if err := cfg.complete(mesh); err != nil {
		return nil, err
	}
	return &Injector{cfg: cfg, mesh: mesh}, nil
}

// Config is the configuration in force, defaults filled in.
func (in *Injector) Config() Config { return in.cfg }

// Result is the outcome for one pod.
type Result struct {
	// Patch is the RFC 6902 JSON patch that injects the pod; nil if it is
	// skipped.
	Patch []byte
	// Skipped says why the pod is not injected; empty if it is.
	Skipped string
	// Warnings are for the user (admission warnings): probes left as
	// written, and why.
	Warnings []string
}

// Inject decides whether pod (in a namespace with nsLabels) is to be
// injected and returns the patch that does it. Its errors are all
// *PodError: what is wrong with the pod.
func (in *Injector) Inject(pod *corev1.Pod, nsLabels map[string]string) (*Result, error) {
	skip, err := wanted(pod, nsLabels)
	if err != nil {
		return nil, err
	}
	if skip != "" {
		return &Result{Skipped: skip}, nil
	}
	if err := checkNames(pod); err != nil {
		return nil, err
	}
	s, err := parseSettings(pod, &in.cfg)
	if err != nil {
		return nil, err
	}
	wapi, err := planWorkloadAPI(pod, &in.cfg)
	if err != nil {
		return nil, err
	}
	var p patch
	res := &Result{}

	// Probes first, at the containers' indices before the insertions.
	probers := probe.Probers{}
	rewriteAll := func(base string, cs []corev1.Container, only func(*corev1.Container) bool) {
		for i := range cs {
			if !only(&cs[i]) {
				continue
			}
			rw, warn := rewriteProbes(&cs[i], in.cfg.AdminPort, probers)
			res.Warnings = append(res.Warnings, warn...)
			for _, r := range rw {
				p.add(fmt.Sprintf("%s/%d/%s", base, i, r.field), r.probe)
			}
		}
	}
	rewriteAll("/spec/containers", pod.Spec.Containers, func(*corev1.Container) bool { return true })
	// The app's own native sidecars may have probes too.
	rewriteAll("/spec/initContainers", pod.Spec.InitContainers, func(c *corev1.Container) bool {
		return c.RestartPolicy != nil && *c.RestartPolicy == corev1.ContainerRestartPolicyAlways
	})
	var probesJSON string
	if len(probers) > 0 {
		b, err := json.Marshal(probers) // map keys sorted: the same pod gives the same patch
		if err != nil {
			return nil, fmt.Errorf("inject: app probes: %w", err)
		}
		if len(b) > probe.MaxInput {
			return nil, &PodError{Field: "spec.containers[*] probes", Msg: fmt.Sprintf("the rewritten probes are %d bytes, more than the proxy reads (%d)", len(b), probe.MaxInput)}
		}
		probesJSON = string(b)
	}

	// mesh-init, then mesh-proxy, ahead of the app's init containers: the
	// rules first, then the proxy the rules send the app's traffic to.
	initC, proxyC := in.initContainer(s), in.proxyContainer(s, probesJSON)
	wapi.addToProxy(&proxyC)
	if len(pod.Spec.InitContainers) == 0 {
		p.add("/spec/initContainers", []corev1.Container{initC, proxyC})
	} else {
		p.add("/spec/initContainers/0", proxyC)
		p.add("/spec/initContainers/0", initC)
	}
	vols := append(in.volumes(), wapi.volumes()...)
	if len(pod.Spec.Volumes) == 0 {
		p.add("/spec/volumes", vols)
	} else {
		for _, v := range vols {
			p.add("/spec/volumes/-", v)
		}
	}
	wapi.patchApps(pod, &p)
	if len(pod.Annotations) == 0 { // an empty map is omitted from the pod's JSON
		p.add("/metadata/annotations", map[string]string{Injected: in.mesh.Version})
	} else {
		p.add("/metadata/annotations/"+escape(Injected), in.mesh.Version)
	}
	if res.Patch, err = json.Marshal(p); err != nil {
		return nil, fmt.Errorf("inject: patch: %w", err)
	}
	return res, nil
}

// checkNames refuses a pod that already uses a name the injector adds.
func checkNames(pod *corev1.Pod) error {
	for _, cs := range [][]corev1.Container{pod.Spec.InitContainers, pod.Spec.Containers} {
		for _, c := range cs {
			if c.Name == InitContainer {
				return &PodError{Field: "container " + c.Name, Msg: "the name is reserved for mesh's init container"}
			}
		}
	}
	for _, c := range pod.Spec.EphemeralContainers {
		if c.Name == InitContainer || c.Name == ProxyContainer {
			return &PodError{Field: "ephemeral container " + c.Name, Msg: "the name is reserved for mesh's containers"}
		}
	}
	for _, v := range pod.Spec.Volumes {
		switch v.Name {
		case tokenVolume, bundleVolume, auditVolume, lockVolume, workloadAPIVolume:
			return &PodError{Field: "volume " + v.Name, Msg: "the name is reserved for mesh's proxy"}
		}
	}
	return nil
}

func (in *Injector) initContainer(s *settings) corev1.Container {
	c := in.cfg
	skipIn := append(ports(c.ExcludeInboundPorts), s.skipIn...)
	skipOut := append(ports(c.ExcludeOutboundPorts), s.skipOut...)
	args := []string{"init",
		"--proxy-uid", strconv.FormatInt(c.ProxyUID, 10),
		"--inbound-port", fmt.Sprint(c.InboundPort),
		"--outbound-port", fmt.Sprint(c.OutboundPort),
		"--admin-port", fmt.Sprint(c.AdminPort),
	}
	if len(skipIn) > 0 {
		args = append(args, "--inbound-skip-ports", joinPorts(dedupe(skipIn)))
	}
	if len(skipOut) > 0 {
		args = append(args, "--outbound-skip-ports", joinPorts(dedupe(skipOut)))
	}
	return corev1.Container{
		Name: InitContainer, Image: c.ProxyImage, ImagePullPolicy: c.ProxyImagePullPolicy, Args: args,
		Resources: c.Resources,
		// iptables needs root with NET_ADMIN and NET_RAW, and nothing else.
		// runAsNonRoot is set false explicitly: a pod-level true would
		// otherwise stop the container.
		SecurityContext: &corev1.SecurityContext{
			RunAsUser: ptrTo(int64(0)), RunAsNonRoot: ptrTo(false),
			Capabilities:             &corev1.Capabilities{Add: []corev1.Capability{"NET_ADMIN", "NET_RAW"}, Drop: []corev1.Capability{"ALL"}},
			ReadOnlyRootFilesystem:   ptrTo(true),
			AllowPrivilegeEscalation: ptrTo(false),
			Privileged:               ptrTo(false),
			SeccompProfile:           &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault},
		},
		// iptables takes its lock in /run: the only writable place.
		VolumeMounts:             []corev1.VolumeMount{{Name: lockVolume, MountPath: "/run"}},
		TerminationMessagePolicy: corev1.TerminationMessageFallbackToLogsOnError,
	}
}

func (in *Injector) proxyContainer(s *settings, probesJSON string) corev1.Container {
	c := in.cfg
	always := corev1.ContainerRestartPolicyAlways
	args := []string{"run",
		"--trust-domain", in.mesh.TrustDomain.Name(),
		"--identity-addr", c.IdentityAddr,
		"--controller-id", in.mesh.ControllerID.String(),
		"--bundle", bundleDir + "/" + trustbundle.Key,
		"--token-file", tokenDir + "/" + tokenFile,
		"--inbound-mode", string(s.inMode),
		"--outbound-mode", string(s.outMode),
		"--admin-port", fmt.Sprint(c.AdminPort),
	}
	if len(s.opaque) > 0 {
		args = append(args, "--opaque-ports", joinPorts(s.opaque))
	}
	if c.PathNormalization != "" {
		args = append(args, "--path-normalization", c.PathNormalization)
	}
	mounts := []corev1.VolumeMount{
		{Name: tokenVolume, MountPath: tokenDir, ReadOnly: true},
		{Name: bundleVolume, MountPath: bundleDir, ReadOnly: true},
	}
	if *c.Audit.Enabled {
		args = append(args, "--audit-log", auditDir+"/audit.log")
		mounts = append(mounts, corev1.VolumeMount{Name: auditVolume, MountPath: auditDir})
	} else {
		args = append(args, "--audit-log", "-")
	}
	if d := c.Audit.CheckpointInterval.Duration; d > 0 {
		args = append(args, "--audit-checkpoint-interval", d.String())
	}
	field := func(name, path string) corev1.EnvVar {
		return corev1.EnvVar{Name: name, ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{APIVersion: "v1", FieldPath: path}}}
	}
	env := []corev1.EnvVar{
		field("POD_NAME", "metadata.name"), field("POD_NAMESPACE", "metadata.namespace"), field("POD_IP", "status.podIP"),
		{Name: "MESH_LOG_LEVEL", Value: c.LogLevel}, {Name: "MESH_LOG_FORMAT", Value: c.LogFormat},
	}
	if probesJSON != "" {
		env = append(env, corev1.EnvVar{Name: "MESH_APP_PROBES", Value: probesJSON})
	}
	admin := func(path string) corev1.ProbeHandler {
		return corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: path, Port: intstr.FromInt32(c.AdminPort), Scheme: corev1.URISchemeHTTP}}
	}
	return corev1.Container{
		Name: ProxyContainer, Image: c.ProxyImage, ImagePullPolicy: c.ProxyImagePullPolicy, Args: args,
		RestartPolicy: &always, Env: env, Resources: c.Resources, VolumeMounts: mounts,
		SecurityContext: &corev1.SecurityContext{
			RunAsUser: ptrTo(c.ProxyUID), RunAsGroup: ptrTo(c.ProxyUID), RunAsNonRoot: ptrTo(true),
			ReadOnlyRootFilesystem: ptrTo(true), AllowPrivilegeEscalation: ptrTo(false), Privileged: ptrTo(false),
			Capabilities:   &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
			SeccompProfile: &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault},
		},
		// The app's init containers and containers start once the proxy
		// has an SVID (a native sidecar's startup probe gates them).
		StartupProbe:             &corev1.Probe{ProbeHandler: admin("/ready"), PeriodSeconds: 1, FailureThreshold: 600, TimeoutSeconds: 1},
		ReadinessProbe:           &corev1.Probe{ProbeHandler: admin("/ready"), PeriodSeconds: 5, FailureThreshold: 3, TimeoutSeconds: 1},
		LivenessProbe:            &corev1.Probe{ProbeHandler: admin("/live"), PeriodSeconds: 10, FailureThreshold: 3, TimeoutSeconds: 1},
		TerminationMessagePolicy: corev1.TerminationMessageFallbackToLogsOnError,
	}
}

func (in *Injector) volumes() []corev1.Volume {
	vols := []corev1.Volume{
		{Name: tokenVolume, VolumeSource: corev1.VolumeSource{Projected: &corev1.ProjectedVolumeSource{Sources: []corev1.VolumeProjection{{
			ServiceAccountToken: &corev1.ServiceAccountTokenProjection{Audience: in.cfg.TokenAudience, ExpirationSeconds: ptrTo(int64(tokenTTL)), Path: tokenFile},
		}}}}},
		{Name: bundleVolume, VolumeSource: corev1.VolumeSource{ConfigMap: &corev1.ConfigMapVolumeSource{LocalObjectReference: corev1.LocalObjectReference{Name: trustbundle.ConfigMapName}}}},
		{Name: lockVolume, VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{Medium: corev1.StorageMediumMemory}}},
	}
	if *in.cfg.Audit.Enabled {
		vols = append(vols, corev1.Volume{Name: auditVolume, VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}})
	}
	return vols
}

func ports(ps Ports) []int {
	out := make([]int, len(ps))
	for i, p := range ps {
		out[i] = int(p)
	}
	return out
}

func dedupe(ps []int) []int {
	seen := map[int]bool{}
	var out []int
	for _, p := range ps {
		if !seen[p] {
			seen[p] = true
			out = append(out, p)
		}
	}
	return out
}

// patch is an RFC 6902 JSON patch.
type patch []patchOp

type patchOp struct {
	Op    string `json:"op"`
	Path  string `json:"path"`
	Value any    `json:"value"`
}

func (p *patch) add(path string, v any) { *p = append(*p, patchOp{Op: "add", Path: path, Value: v}) }

// escape makes s one JSON Pointer token (RFC 6901).
func escape(s string) string { return strings.NewReplacer("~", "~0", "/", "~1").Replace(s) }
