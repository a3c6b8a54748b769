package inject_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	jsonpatch "gopkg.in/evanphx/json-patch.v4"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/mesh-dev/mesh/controlplane/inventory"
	"github.com/mesh-dev/mesh/controlplane/trustbundle"
	"github.com/mesh-dev/mesh/identity"
	"github.com/mesh-dev/mesh/inject"
	"github.com/mesh-dev/mesh/internal/intorstr"
	"github.com/mesh-dev/mesh/proxy/probe"
)

var mesh = inject.Mesh{
	TrustDomain:  spiffeid.RequireTrustDomainFromString("example.org"),
	ControllerID: spiffeid.RequireFromString("spiffe://example.org/ns/mesh-system/sa/mesh-controller"),
	Namespace:    "mesh-system",
	Version:      "1.2.3",
}

var labelled = map[string]string{inject.InjectKey: inject.Enabled}

func newInjector(t testing.TB, cfg inject.Config) *inject.Injector {
	t.Helper()
	in, err := inject.New(cfg, mesh)
	if err != nil {
		t.Fatal(err)
	}
	return in
}

// apply applies a JSON patch to pod as the API server would.
func apply(t testing.TB, pod *corev1.Pod, patch []byte) *corev1.Pod {
	t.Helper()
	orig, err := json.Marshal(pod)
	if err != nil {
		t.Fatal(err)
	}
	p, err := jsonpatch.DecodePatch(patch)
	if err != nil {
		t.Fatalf("patch does not decode: %v\n%s", err, patch)
	}
	out, err := p.Apply(orig)
	if err != nil {
		t.Fatalf("patch does not apply: %v\n%s", err, patch)
	}
	var got corev1.Pod
	if err := json.Unmarshal(out, &got); err != nil {
		t.Fatal(err)
	}
	return &got
}

// web is an app pod with a readiness probe on a named port, a liveness
// probe by number and an exec startup probe.
func web() *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: "shop", Labels: map[string]string{"app": "web"}},
		Spec: corev1.PodSpec{
			ServiceAccountName: "web",
			Containers: []corev1.Container{{
				Name: "web", Image: "web:1",
				Ports:          []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}, {Name: "dns", ContainerPort: 53, Protocol: corev1.ProtocolUDP}},
				ReadinessProbe: &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/ready", Port: intstr.FromString("http")}}, TimeoutSeconds: 2, PeriodSeconds: 7},
				LivenessProbe:  &corev1.Probe{ProbeHandler: corev1.ProbeHandler{TCPSocket: &corev1.TCPSocketAction{Port: intstr.FromInt32(9000)}}, TimeoutSeconds: 1},
				StartupProbe:   &corev1.Probe{ProbeHandler: corev1.ProbeHandler{Exec: &corev1.ExecAction{Command: []string{"true"}}}},
			}},
		},
	}
}

func names(cs []corev1.Container) []string {
	var out []string
	for _, c := range cs {
		out = append(out, c.Name)
	}
	return out
}

func find(cs []corev1.Container, name string) *corev1.Container {
	for i := range cs {
		if cs[i].Name == name {
			return &cs[i]
		}
	}
	return nil
}

func envOf(c *corev1.Container, name string) (corev1.EnvVar, bool) {
	for _, e := range c.Env {
		if e.Name == name {
			return e, true
		}
	}
	return corev1.EnvVar{}, false
}

// argOf is the value after flag in args.
func argOf(args []string, flag string) (string, bool) {
	i := slices.Index(args, flag)
	if i < 0 || i+1 >= len(args) {
		return "", false
	}
	return args[i+1], true
}

// TestInjects: what an injected pod gets, checked field by field on the
// pod the patch produces.
func TestInjects(t *testing.T) {
	in := newInjector(t, inject.Config{})
	pod := web()
	res, err := in.Inject(pod, labelled)
	if err != nil || res.Skipped != "" {
		t.Fatalf("Inject: %v, skipped %q", err, res.Skipped)
	}
	got := apply(t, pod, res.Patch)

	if n := names(got.Spec.InitContainers); !slices.Equal(n, []string{"mesh-init", "mesh-proxy"}) {
		t.Fatalf("init containers %v", n)
	}
	if !inventory.Meshed(got) {
		t.Error("the controller's inventory does not see the injected pod as meshed")
	}
	if got.Annotations[inject.Injected] != mesh.Version {
		t.Errorf("annotations %v, want %s=%s", got.Annotations, inject.Injected, mesh.Version)
	}

	ini := find(got.Spec.InitContainers, "mesh-init")
	if ini.Image != "ghcr.io/mesh-dev/mesh-proxy:1.2.3" || ini.Args[0] != "init" {
		t.Errorf("mesh-init image %q args %v", ini.Image, ini.Args)
	}
	for flag, want := range map[string]string{"--proxy-uid": "1337", "--inbound-port": "15006", "--outbound-port": "15001", "--admin-port": "15020"} {
		if v, _ := argOf(ini.Args, flag); v != want {
			t.Errorf("mesh-init %s = %q, want %q", flag, v, want)
		}
	}
	isc := ini.SecurityContext
	if *isc.RunAsUser != 0 || *isc.RunAsNonRoot || !slices.Equal(isc.Capabilities.Add, []corev1.Capability{"NET_ADMIN", "NET_RAW"}) ||
		!slices.Equal(isc.Capabilities.Drop, []corev1.Capability{"ALL"}) || *isc.AllowPrivilegeEscalation || *isc.Privileged ||
		!*isc.ReadOnlyRootFilesystem || isc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
		t.Errorf("mesh-init security context %+v", isc)
	}

	px := find(got.Spec.InitContainers, "mesh-proxy")
	if px.RestartPolicy == nil || *px.RestartPolicy != corev1.ContainerRestartPolicyAlways {
		t.Error("mesh-proxy is not a native sidecar (restartPolicy Always)")
	}
	psc := px.SecurityContext
	if *psc.RunAsUser != 1337 || *psc.RunAsGroup != 1337 || !*psc.RunAsNonRoot || !*psc.ReadOnlyRootFilesystem || *psc.AllowPrivilegeEscalation ||
		len(psc.Capabilities.Add) != 0 || !slices.Equal(psc.Capabilities.Drop, []corev1.Capability{"ALL"}) || psc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
		t.Errorf("mesh-proxy security context %+v", psc)
	}
	for flag, want := range map[string]string{
		"--trust-domain": "example.org", "--identity-addr": "mesh-controller.mesh-system.svc:15012",
		"--controller-id": mesh.ControllerID.String(), "--bundle": "/run/mesh/bundle/" + trustbundle.Key,
		"--token-file": "/var/run/secrets/mesh/tokens/identity-token", "--inbound-mode": "strict", "--outbound-mode": "permissive",
		"--admin-port": "15020", "--audit-log": "/run/mesh/audit/audit.log",
	} {
		if v, _ := argOf(px.Args, flag); v != want {
			t.Errorf("mesh-proxy %s = %q, want %q", flag, v, want)
		}
	}
	for name, path := range map[string]string{"POD_NAME": "metadata.name", "POD_NAMESPACE": "metadata.namespace", "POD_IP": "status.podIP"} {
		if e, ok := envOf(px, name); !ok || e.ValueFrom == nil || e.ValueFrom.FieldRef.FieldPath != path {
			t.Errorf("env %s = %+v, want the downward API's %s", name, e, path)
		}
	}
	if px.StartupProbe == nil || px.StartupProbe.HTTPGet.Path != "/ready" || px.StartupProbe.HTTPGet.Port.IntVal != 15020 {
		t.Errorf("mesh-proxy startup probe %+v: the app must wait for the proxy's SVID", px.StartupProbe)
	}
	if px.Resources.Requests.Cpu().String() != "10m" || px.Resources.Limits.Memory().String() != "256Mi" {
		t.Errorf("default resources %+v", px.Resources)
	}

	// The volumes, and each mount's volume exists.
	vols := map[string]corev1.Volume{}
	for _, v := range got.Spec.Volumes {
		vols[v.Name] = v
	}
	tok := vols["mesh-token"].Projected
	if tok == nil || tok.Sources[0].ServiceAccountToken.Audience != identity.DefaultAudience || tok.Sources[0].ServiceAccountToken.Path != "identity-token" {
		t.Errorf("token volume %+v", vols["mesh-token"])
	}
	if cm := vols["mesh-bundle"].ConfigMap; cm == nil || cm.Name != trustbundle.ConfigMapName {
		t.Errorf("bundle volume %+v", vols["mesh-bundle"])
	}
	for _, c := range got.Spec.InitContainers {
		for _, m := range c.VolumeMounts {
			if _, ok := vols[m.Name]; !ok {
				t.Errorf("%s mounts volume %s, which the pod lacks", c.Name, m.Name)
			}
		}
	}

	// Probes: HTTP (named port resolved) and TCP rewritten, exec kept.
	app := got.Spec.Containers[0]
	if h := app.ReadinessProbe.HTTPGet; h == nil || h.Path != "/app-health/web/readyz" || h.Port.IntVal != 15020 || app.ReadinessProbe.PeriodSeconds != 7 || app.ReadinessProbe.TimeoutSeconds != 2 {
		t.Errorf("readiness probe %+v, want a GET of /app-health/web/readyz on 15020 with the original timing", app.ReadinessProbe)
	}
	if h := app.LivenessProbe.HTTPGet; h == nil || h.Path != "/app-health/web/livez" || app.LivenessProbe.TCPSocket != nil {
		t.Errorf("liveness probe %+v", app.LivenessProbe)
	}
	if app.StartupProbe.Exec == nil || app.StartupProbe.HTTPGet != nil {
		t.Errorf("exec startup probe was rewritten: %+v", app.StartupProbe)
	}
	e, _ := envOf(px, "MESH_APP_PROBES")
	probers, err := probe.Parse([]byte(e.Value))
	if err != nil {
		t.Fatalf("the proxy refuses MESH_APP_PROBES %q: %v", e.Value, err)
	}
	want := probe.Probers{
		"/app-health/web/readyz": {HTTPGet: &probe.HTTPGetAction{Path: "/ready", Port: intorstr.FromInt32(8080)}, TimeoutSeconds: 2},
		"/app-health/web/livez":  {TCPSocket: &probe.TCPSocketAction{Port: intorstr.FromInt32(9000)}, TimeoutSeconds: 1},
	}
	wj, _ := json.Marshal(want)
	gj, _ := json.Marshal(probers)
	if string(wj) != string(gj) {
		t.Errorf("MESH_APP_PROBES\n got %s\nwant %s", gj, wj)
	}

	// Idempotent: the injected pod is left alone, and injecting the
	// original again gives the same patch.
	again, err := in.Inject(got, labelled)
	if err != nil || again.Patch != nil || !strings.Contains(again.Skipped, "already has a mesh-proxy") {
		t.Errorf("second injection: %v, %+v", err, again)
	}
	res2, _ := in.Inject(web(), labelled)
	if string(res2.Patch) != string(res.Patch) {
		t.Error("the same pod gives a different patch")
	}
}

// TestDecision: who is injected and who is skipped or refused.
func TestDecision(t *testing.T) {
	in := newInjector(t, inject.Config{})
	with := func(f func(*corev1.Pod)) *corev1.Pod { p := web(); f(p); return p }
	ann := func(kv ...string) func(*corev1.Pod) {
		return func(p *corev1.Pod) {
			p.Annotations = map[string]string{}
			for i := 0; i < len(kv); i += 2 {
				p.Annotations[kv[i]] = kv[i+1]
			}
		}
	}
	tests := []struct {
		name    string
		pod     *corev1.Pod
		ns      map[string]string
		skipped string // substring; "" means injected
		refused string // substring of a PodError
	}{
		{name: "namespace labelled", pod: web(), ns: labelled},
		{name: "namespace not labelled", pod: web(), ns: nil, skipped: "neither the pod nor its namespace"},
		{name: "namespace label not enabled", pod: web(), ns: map[string]string{inject.InjectKey: "true"}, skipped: "neither"},
		{name: "pod annotated enabled", pod: with(ann(inject.InjectKey, "enabled")), ns: nil},
		{name: "pod labelled enabled", pod: with(func(p *corev1.Pod) { p.Labels[inject.InjectKey] = "enabled" }), ns: nil},
		{name: "pod annotated disabled", pod: with(ann(inject.InjectKey, "disabled")), ns: labelled, skipped: "disabled"},
		{name: "pod labelled disabled", pod: with(func(p *corev1.Pod) { p.Labels[inject.InjectKey] = "disabled" }), ns: labelled, skipped: "disabled"},
		{name: "disabled pod with bad annotations", pod: with(ann(inject.InjectKey, "disabled", inject.InboundMode, "off")), ns: labelled, skipped: "disabled"},
		{name: "label and annotation disagree", pod: with(func(p *corev1.Pod) {
			p.Labels[inject.InjectKey] = "enabled"
			p.Annotations = map[string]string{inject.InjectKey: "disabled"}
		}), ns: labelled, refused: `mesh.dev/inject: the pod's label says "enabled" and its annotation "disabled"`},
		{name: "inject yes", pod: with(ann(inject.InjectKey, "yes")), ns: labelled, refused: `mesh.dev/inject: "yes" is not enabled or disabled`},
		{name: "inject Enabled", pod: with(ann(inject.InjectKey, "Enabled")), ns: labelled, refused: `"Enabled" is not enabled or disabled`},
		{name: "inject huge", pod: with(ann(inject.InjectKey, strings.Repeat("x", 100000))), ns: labelled, refused: `"` + strings.Repeat("x", 64) + `..." is not`},
		{name: "hostNetwork", pod: with(func(p *corev1.Pod) { p.Spec.HostNetwork = true }), ns: labelled, skipped: "hostNetwork"},
		{name: "hostNetwork annotated enabled", pod: with(func(p *corev1.Pod) {
			p.Spec.HostNetwork = true
			p.Annotations = map[string]string{inject.InjectKey: "enabled"}
		}), ns: labelled, skipped: "hostNetwork"},
		{name: "app container named mesh-proxy", pod: with(func(p *corev1.Pod) { p.Spec.Containers[0].Name = "mesh-proxy" }), ns: labelled, skipped: "already has a mesh-proxy"},
		{name: "app container named mesh-init", pod: with(func(p *corev1.Pod) { p.Spec.Containers[0].Name = "mesh-init" }), ns: labelled, refused: "container mesh-init: the name is reserved"},
		{name: "app init container named mesh-init", pod: with(func(p *corev1.Pod) {
			p.Spec.InitContainers = []corev1.Container{{Name: "mesh-init", Image: "evil"}}
		}), ns: labelled, refused: "container mesh-init: the name is reserved"},
		{name: "ephemeral container named mesh-proxy", pod: with(func(p *corev1.Pod) {
			p.Spec.EphemeralContainers = []corev1.EphemeralContainer{{EphemeralContainerCommon: corev1.EphemeralContainerCommon{Name: "mesh-proxy"}}}
		}), ns: labelled, refused: "ephemeral container mesh-proxy"},
		{name: "volume named mesh-token", pod: with(func(p *corev1.Pod) {
			p.Spec.Volumes = []corev1.Volume{{Name: "mesh-token", VolumeSource: corev1.VolumeSource{HostPath: &corev1.HostPathVolumeSource{Path: "/"}}}}
		}), ns: labelled, refused: "volume mesh-token: the name is reserved"},
		{name: "skip ports", pod: with(ann(inject.SkipInboundPorts, "9000, 8081", inject.SkipOutboundPorts, "5432")), ns: labelled},
		{name: "skip ports letters", pod: with(ann(inject.SkipInboundPorts, "http")), ns: labelled, refused: `mesh.dev/skip-inbound-ports: "http" is not a port`},
		{name: "skip port zero", pod: with(ann(inject.SkipOutboundPorts, "0")), ns: labelled, refused: `mesh.dev/skip-outbound-ports: "0" is not a port`},
		{name: "skip port too big", pod: with(ann(inject.SkipOutboundPorts, "65536")), ns: labelled, refused: `"65536" is not a port`},
		{name: "skip port negative", pod: with(ann(inject.SkipOutboundPorts, "-1")), ns: labelled, refused: `"-1" is not a port`},
		{name: "skip port range", pod: with(ann(inject.SkipInboundPorts, "8000-9000")), ns: labelled, refused: `"8000-9000" is not a port`},
		{name: "skip port shell", pod: with(ann(inject.SkipInboundPorts, "80;rm -rf /")), ns: labelled, refused: `"80;rm -rf /" is not a port`},
		{name: "skip port flag injection", pod: with(ann(inject.SkipInboundPorts, "80 --iptables=/bin/sh")), ns: labelled, refused: "is not a port"},
		{name: "skip the proxy's inbound port", pod: with(ann(inject.SkipInboundPorts, "15006")), ns: labelled, refused: "15006 is one of the proxy's own ports"},
		{name: "skip ports huge", pod: with(ann(inject.SkipInboundPorts, strings.Repeat("80,", 2000))), ns: labelled, refused: "6000 bytes, more than 4096"},
		{name: "opaque ports", pod: with(ann(inject.OpaquePorts, "5432,6379")), ns: labelled},
		{name: "opaque ports bad", pod: with(ann(inject.OpaquePorts, "postgres")), ns: labelled, refused: `mesh.dev/opaque-ports: "postgres" is not a port`},
		{name: "inbound permissive", pod: with(ann(inject.InboundMode, "permissive")), ns: labelled},
		{name: "inbound mode upper case", pod: with(ann(inject.InboundMode, "STRICT")), ns: labelled, refused: `mesh.dev/inbound-mode: "STRICT" is not strict or permissive`},
		{name: "inbound mode empty", pod: with(ann(inject.InboundMode, "")), ns: labelled, refused: `mesh.dev/inbound-mode: "" is not strict or permissive`},
		{name: "outbound mode disabled", pod: with(ann(inject.OutboundMode, "disabled")), ns: labelled, refused: `mesh.dev/outbound-mode: "disabled" is not strict or permissive`},
		{name: "outbound mode trailing space", pod: with(ann(inject.OutboundMode, "strict ")), ns: labelled, refused: `"strict " is not strict or permissive`},
		{name: "workload-api without runAsUser", pod: with(ann(inject.WorkloadAPI, "enabled")), ns: labelled, refused: "mesh.dev/workload-api: container web declares no runAsUser"},
		{name: "workload-api disabled", pod: with(ann(inject.WorkloadAPI, "disabled")), ns: labelled},
		{name: "workload-api yes", pod: with(ann(inject.WorkloadAPI, "yes")), ns: labelled, refused: `mesh.dev/workload-api: "yes" is not enabled or disabled`},
		{name: "volume named mesh-workload-api", pod: with(func(p *corev1.Pod) {
			p.Spec.Volumes = []corev1.Volume{{Name: "mesh-workload-api"}}
		}), ns: labelled, refused: "volume mesh-workload-api: the name is reserved"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			res, err := in.Inject(tc.pod, tc.ns)
			var pe *inject.PodError
			switch {
			case tc.refused != "":
				if !errors.As(err, &pe) || !strings.Contains(err.Error(), tc.refused) || !strings.HasPrefix(err.Error(), "inject: ") {
					t.Fatalf("error %v, want a PodError containing %q", err, tc.refused)
				}
				if len(err.Error()) > 400 {
					t.Errorf("error is %d bytes long", len(err.Error()))
				}
			case err != nil:
				t.Fatalf("Inject: %v", err)
			case tc.skipped != "":
				if res.Patch != nil || !strings.Contains(res.Skipped, tc.skipped) {
					t.Fatalf("result %+v, want skipped for %q", res, tc.skipped)
				}
			default:
				if res.Skipped != "" || res.Patch == nil {
					t.Fatalf("skipped: %s", res.Skipped)
				}
				got := apply(t, tc.pod, res.Patch)
				if !inventory.Meshed(got) {
					t.Fatal("not injected")
				}
			}
		})
	}
}

// TestAnnotationsReachTheProxy: skip ports reach mesh-init (merged with
// the configured exclusions, deduplicated), opaque ports and modes reach
// mesh-proxy.
func TestAnnotationsReachTheProxy(t *testing.T) {
	in := newInjector(t, inject.Config{ExcludeInboundPorts: inject.Ports{22, 9000}, ExcludeOutboundPorts: inject.Ports{5432}, InboundMode: "permissive", OutboundMode: "strict"})
	tests := []struct {
		ann     map[string]string
		initArg map[string]string // flag: value, "" for absent
		runArg  map[string]string
	}{
		{
			ann:     nil,
			initArg: map[string]string{"--inbound-skip-ports": "22,9000", "--outbound-skip-ports": "5432"},
			runArg:  map[string]string{"--inbound-mode": "permissive", "--outbound-mode": "strict", "--opaque-ports": ""},
		},
		{
			ann:     map[string]string{inject.SkipInboundPorts: "9000,8081,8081", inject.SkipOutboundPorts: " 6379 ", inject.OpaquePorts: "9000,5432", inject.InboundMode: "strict", inject.OutboundMode: "permissive"},
			initArg: map[string]string{"--inbound-skip-ports": "22,9000,8081", "--outbound-skip-ports": "5432,6379"},
			runArg:  map[string]string{"--inbound-mode": "strict", "--outbound-mode": "permissive", "--opaque-ports": "5432,9000"},
		},
	}
	for i, tc := range tests {
		pod := web()
		pod.Annotations = tc.ann
		res, err := in.Inject(pod, labelled)
		if err != nil {
			t.Fatal(err)
		}
		got := apply(t, pod, res.Patch)
		for c, want := range map[string]map[string]string{"mesh-init": tc.initArg, "mesh-proxy": tc.runArg} {
			args := find(got.Spec.InitContainers, c).Args
			for flag, v := range want {
				if g, _ := argOf(args, flag); g != v {
					t.Errorf("case %d: %s %s = %q, want %q", i, c, flag, g, v)
				}
			}
		}
		for k, v := range tc.ann {
			if got.Annotations[k] != v {
				t.Errorf("case %d: the pod's own annotation %s changed to %q", i, k, got.Annotations[k])
			}
		}
	}
}

// TestOrderWithAppInitContainers: mesh-init runs first, the proxy second
// (the app's init containers' traffic is intercepted, so the proxy must
// already run), and the app's init containers and volumes are kept after.
func TestOrderWithAppInitContainers(t *testing.T) {
	in := newInjector(t, inject.Config{})
	always := corev1.ContainerRestartPolicyAlways
	pod := web()
	pod.Spec.InitContainers = []corev1.Container{
		{Name: "migrate", Image: "migrate:1"},
		{Name: "log-shipper", Image: "ship:1", RestartPolicy: &always, Ports: []corev1.ContainerPort{{Name: "metrics", ContainerPort: 9100}},
			ReadinessProbe: &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/metrics", Port: intstr.FromString("metrics")}}}},
	}
	pod.Spec.Volumes = []corev1.Volume{{Name: "data", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}}}
	pod.Annotations = map[string]string{"keep": "me", "a/b~c": "x"}
	pod.Spec.SecurityContext = &corev1.PodSecurityContext{RunAsNonRoot: ptrTo(true), RunAsUser: ptrTo(int64(1000))}
	res, err := in.Inject(pod, labelled)
	if err != nil {
		t.Fatal(err)
	}
	got := apply(t, pod, res.Patch)
	if n := names(got.Spec.InitContainers); !slices.Equal(n, []string{"mesh-init", "mesh-proxy", "migrate", "log-shipper"}) {
		t.Fatalf("init containers %v", n)
	}
	if ls := got.Spec.InitContainers[3].ReadinessProbe.HTTPGet; ls.Path != "/app-health/log-shipper/readyz" {
		t.Errorf("the app's sidecar probe: %+v", ls)
	}
	if got.Spec.InitContainers[2].Image != "migrate:1" || got.Spec.Volumes[0].Name != "data" || len(got.Spec.Volumes) != 5 {
		t.Errorf("app init containers or volumes changed: %v %v", got.Spec.InitContainers[2], got.Spec.Volumes)
	}
	if got.Annotations["keep"] != "me" || got.Annotations["a/b~c"] != "x" || got.Annotations[inject.Injected] != "1.2.3" {
		t.Errorf("annotations %v", got.Annotations)
	}
	if nr := got.Spec.InitContainers[0].SecurityContext.RunAsNonRoot; nr == nil || *nr {
		t.Error("mesh-init inherits the pod's runAsNonRoot: true and could not start")
	}
	e, _ := envOf(&got.Spec.InitContainers[1], "MESH_APP_PROBES")
	if p, err := probe.Parse([]byte(e.Value)); err != nil || p["/app-health/log-shipper/readyz"].HTTPGet.Port.IntVal != 9100 {
		t.Errorf("MESH_APP_PROBES %s: %v", e.Value, err)
	}
}

// TestProbes: which probes are rewritten and which are left, with why.
func TestProbes(t *testing.T) {
	in := newInjector(t, inject.Config{AdminPort: 15021})
	h := func(a corev1.HTTPGetAction) *corev1.Probe {
		return &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &a}}
	}
	tests := []struct {
		name    string
		probe   *corev1.Probe
		want    string // the original recorded in MESH_APP_PROBES; "" if left as is
		warning string
	}{
		{"http numbered", h(corev1.HTTPGetAction{Path: "/healthz", Port: intstr.FromInt32(8080)}), `{"httpGet":{"path":"/healthz","port":8080}}`, ""},
		{"http named", h(corev1.HTTPGetAction{Path: "/healthz", Port: intstr.FromString("http")}), `{"httpGet":{"path":"/healthz","port":8080}}`, ""},
		{"http no path", h(corev1.HTTPGetAction{Port: intstr.FromInt32(8080)}), `{"httpGet":{"path":"/","port":8080}}`, ""},
		{"https with header", h(corev1.HTTPGetAction{Path: "/h", Port: intstr.FromInt32(8443), Scheme: corev1.URISchemeHTTPS, HTTPHeaders: []corev1.HTTPHeader{{Name: "X-Probe", Value: "1"}}}),
			`{"httpGet":{"path":"/h","port":8443,"scheme":"HTTPS","httpHeaders":[{"name":"X-Probe","value":"1"}]}}`, ""},
		{"http unknown named port", h(corev1.HTTPGetAction{Path: "/", Port: intstr.FromString("nope")}), "", `named port "nope" is not a TCP port`},
		{"http named UDP port", h(corev1.HTTPGetAction{Path: "/", Port: intstr.FromString("dns")}), "", `named port "dns" is not a TCP port`},
		{"http host", h(corev1.HTTPGetAction{Path: "/", Host: "10.0.0.1", Port: intstr.FromInt32(80)}), "", `httpGet.host "10.0.0.1" is set`},
		{"http to the admin port", h(corev1.HTTPGetAction{Path: "/app-health/app/readyz", Port: intstr.FromInt32(15021)}), "", ""},
		{"http path with host", h(corev1.HTTPGetAction{Path: "//evil.example/x", Port: intstr.FromInt32(80)}), "", "must be a path, not a URL with a host"},
		{"http header with CR", h(corev1.HTTPGetAction{Path: "/", Port: intstr.FromInt32(80), HTTPHeaders: []corev1.HTTPHeader{{Name: "X", Value: "a\r\nHost: evil"}}}), "", "control characters"},
		{"tcp named", &corev1.Probe{ProbeHandler: corev1.ProbeHandler{TCPSocket: &corev1.TCPSocketAction{Port: intstr.FromString("http")}}, TimeoutSeconds: 3}, `{"tcpSocket":{"port":8080},"timeoutSeconds":3}`, ""},
		{"tcp host", &corev1.Probe{ProbeHandler: corev1.ProbeHandler{TCPSocket: &corev1.TCPSocketAction{Host: "db", Port: intstr.FromInt32(5432)}}}, "", `tcpSocket.host "db" is set`},
		{"grpc", &corev1.Probe{ProbeHandler: corev1.ProbeHandler{GRPC: &corev1.GRPCAction{Port: 9090, Service: ptrTo("live")}}}, `{"grpc":{"port":9090,"service":"live"}}`, ""},
		{"grpc port zero", &corev1.Probe{ProbeHandler: corev1.ProbeHandler{GRPC: &corev1.GRPCAction{Port: 0}}}, "", "grpc.port 0 is out of range"},
		{"exec", &corev1.Probe{ProbeHandler: corev1.ProbeHandler{Exec: &corev1.ExecAction{Command: []string{"true"}}}}, "", ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			pod := &corev1.Pod{Spec: corev1.PodSpec{Containers: []corev1.Container{{
				Name: "app", Image: "app", Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}, {Name: "dns", ContainerPort: 53, Protocol: corev1.ProtocolUDP}},
				ReadinessProbe: tc.probe,
			}}}}
			res, err := in.Inject(pod, labelled)
			if err != nil {
				t.Fatal(err)
			}
			got := apply(t, pod, res.Patch)
			rp := got.Spec.Containers[0].ReadinessProbe
			e, hasEnv := envOf(find(got.Spec.InitContainers, "mesh-proxy"), "MESH_APP_PROBES")
			if tc.want == "" {
				pj, _ := json.Marshal(tc.probe)
				gj, _ := json.Marshal(rp)
				if string(pj) != string(gj) || hasEnv {
					t.Errorf("probe changed to %s (MESH_APP_PROBES %q); want it left as %s", gj, e.Value, pj)
				}
			} else {
				if rp.HTTPGet == nil || rp.HTTPGet.Path != "/app-health/app/readyz" || rp.HTTPGet.Port.IntVal != 15021 || rp.TCPSocket != nil || rp.GRPC != nil {
					t.Errorf("probe %+v, want a GET on the admin port", rp)
				}
				if want := `{"/app-health/app/readyz":` + tc.want + `}`; e.Value != want {
					t.Errorf("MESH_APP_PROBES\n got %s\nwant %s", e.Value, want)
				}
			}
			if joined := strings.Join(res.Warnings, "\n"); (tc.warning == "") != (joined == "") || !strings.Contains(joined, tc.warning) {
				t.Errorf("warnings %q, want %q", joined, tc.warning)
			}
		})
	}
}

// TestHugePods: a pod with many containers and probes is injected with
// every probe rewritten; one whose probes would exceed what the proxy
// reads is refused, not injected with probes the proxy would reject.
func TestHugePods(t *testing.T) {
	in := newInjector(t, inject.Config{})
	mk := func(n int, header string) *corev1.Pod {
		pod := &corev1.Pod{}
		for i := range n {
			p := &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/h", Port: intstr.FromInt32(8080),
				HTTPHeaders: []corev1.HTTPHeader{{Name: "X-Pad", Value: header}}}}}
			pod.Spec.Containers = append(pod.Spec.Containers, corev1.Container{Name: fmt.Sprintf("c%d", i), Image: "app", LivenessProbe: p, ReadinessProbe: p, StartupProbe: p})
			pod.Spec.Volumes = append(pod.Spec.Volumes, corev1.Volume{Name: fmt.Sprintf("v%d", i)})
		}
		return pod
	}
	pod := mk(300, "x")
	res, err := in.Inject(pod, labelled)
	if err != nil {
		t.Fatal(err)
	}
	got := apply(t, pod, res.Patch)
	e, _ := envOf(find(got.Spec.InitContainers, "mesh-proxy"), "MESH_APP_PROBES")
	probers, err := probe.Parse([]byte(e.Value))
	if err != nil || len(probers) != 900 {
		t.Fatalf("%d probes, err %v; want 900", len(probers), err)
	}
	if len(got.Spec.Volumes) != 304 || got.Spec.Containers[299].StartupProbe.HTTPGet.Path != "/app-health/c299/startupz" {
		t.Error("volumes or the last container's probes are wrong")
	}

	_, err = in.Inject(mk(100, strings.Repeat("p", 1000)), labelled)
	var pe *inject.PodError
	if !errors.As(err, &pe) || !strings.Contains(err.Error(), "more than the proxy reads") {
		t.Fatalf("error %v, want a refusal of probes too large for the proxy", err)
	}
}

// TestAuditDisabled: audit records go to standard output and the audit
// volume is not added.
func TestAuditDisabled(t *testing.T) {
	cfg, err := inject.ParseConfig([]byte("audit:\n  enabled: false\n  checkpointInterval: 30s\npathNormalization: base\n"))
	if err != nil {
		t.Fatal(err)
	}
	in := newInjector(t, cfg)
	pod := web()
	res, err := in.Inject(pod, labelled)
	if err != nil {
		t.Fatal(err)
	}
	got := apply(t, pod, res.Patch)
	px := find(got.Spec.InitContainers, "mesh-proxy")
	for flag, want := range map[string]string{"--audit-log": "-", "--audit-checkpoint-interval": "30s", "--path-normalization": "BASE"} {
		if v, _ := argOf(px.Args, flag); v != want {
			t.Errorf("%s = %q, want %q", flag, v, want)
		}
	}
	for _, v := range got.Spec.Volumes {
		if v.Name == "mesh-audit" {
			t.Error("audit volume added with audit disabled")
		}
	}
}

func ptrTo[T any](v T) *T { return &v }
