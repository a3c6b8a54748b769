package charts

import (
	"fmt"
	"maps"
	"slices"
	"strings"
	"testing"

	admissionv1 "k8s.io/api/admissionregistration/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"
)

// objects are a rendering's manifests decoded into their Kubernetes types.
type objects struct {
	deployments         []*appsv1.Deployment
	services            []*corev1.Service
	serviceAccounts     []*corev1.ServiceAccount
	configMaps          []*corev1.ConfigMap
	pdbs                []*policyv1.PodDisruptionBudget
	roles               []*rbacv1.Role
	clusterRoles        []*rbacv1.ClusterRole
	roleBindings        []*rbacv1.RoleBinding
	clusterRoleBindings []*rbacv1.ClusterRoleBinding
	mutating            []*admissionv1.MutatingWebhookConfiguration
	validating          []*admissionv1.ValidatingWebhookConfiguration
}

// decodeStrict decodes one manifest into out, refusing unknown or
// duplicated fields: a misspelt field in a template fails here, where the
// API server would drop it silently.
func decodeStrict(content string, out any) error {
	return yaml.UnmarshalStrict([]byte(content), out)
}

// decode decodes every manifest of r by its kind; an unexpected kind is an
// error, so a new template must be added here (and to the checks).
func decode(t *testing.T, r *rendered) *objects {
	t.Helper()
	o := &objects{}
	for _, m := range r.manifests {
		var err error
		switch m.Head.Kind {
		case "Deployment":
			err = add(m.Content, &o.deployments)
		case "Service":
			err = add(m.Content, &o.services)
		case "ServiceAccount":
			err = add(m.Content, &o.serviceAccounts)
		case "ConfigMap":
			err = add(m.Content, &o.configMaps)
		case "PodDisruptionBudget":
			err = add(m.Content, &o.pdbs)
		case "Role":
			err = add(m.Content, &o.roles)
		case "ClusterRole":
			err = add(m.Content, &o.clusterRoles)
		case "RoleBinding":
			err = add(m.Content, &o.roleBindings)
		case "ClusterRoleBinding":
			err = add(m.Content, &o.clusterRoleBindings)
		case "MutatingWebhookConfiguration":
			err = add(m.Content, &o.mutating)
		case "ValidatingWebhookConfiguration":
			err = add(m.Content, &o.validating)
		default:
			err = fmt.Errorf("unexpected kind %q", m.Head.Kind)
		}
		if err != nil {
			t.Fatalf("%s (%s %s): %v", m.Name, m.Head.Kind, m.Head.Metadata.Name, err)
		}
	}
	return o
}

func add[T any](content string, list *[]*T) error {
	v := new(T)
	if err := decodeStrict(content, v); err != nil {
		return err
	}
	*list = append(*list, v)
	return nil
}

// TestManifests: every object decodes strictly, namespaced objects are in
// the release namespace, and the objects the controller's flags name exist.
func TestManifests(t *testing.T) {
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := mustRender(t, c.file)
			o := decode(t, r)
			for _, m := range r.manifests {
				var meta struct {
					Metadata metav1.ObjectMeta `json:"metadata"`
				}
				if err := yaml.Unmarshal([]byte(m.Content), &meta); err != nil {
					t.Fatal(err)
				}
				clusterScoped := slices.Contains([]string{"ClusterRole", "ClusterRoleBinding", "MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"}, m.Head.Kind)
				if ns := meta.Metadata.Namespace; clusterScoped != (ns == "") || (!clusterScoped && ns != releaseNS) {
					t.Errorf("%s %s: namespace %q; want %q for namespaced objects, none for cluster-scoped", m.Head.Kind, meta.Metadata.Name, ns, releaseNS)
				}
				if meta.Metadata.Labels["app.kubernetes.io/managed-by"] != "Helm" || meta.Metadata.Labels["app.kubernetes.io/instance"] != releaseName {
					t.Errorf("%s %s: labels %v lack the release's", m.Head.Kind, meta.Metadata.Name, meta.Metadata.Labels)
				}
			}
			names := func(kind string, n int, got ...string) {
				if len(got) != n {
					t.Errorf("%d %s: %v; want %d", len(got), kind, got, n)
				}
			}
			names("Deployments", 1, nameOf(o.deployments)...)
			names("ServiceAccounts", 1, nameOf(o.serviceAccounts)...)
			names("ConfigMaps", 1, nameOf(o.configMaps)...)
			names("Services", 2, nameOf(o.services)...)
			names("Roles", 1, nameOf(o.roles)...)
			names("ClusterRoles", 1, nameOf(o.clusterRoles)...)
			names("RoleBindings", 1, nameOf(o.roleBindings)...)
			names("ClusterRoleBindings", 1, nameOf(o.clusterRoleBindings)...)
			names("MutatingWebhookConfigurations", 1, nameOf(o.mutating)...)
			names("ValidatingWebhookConfigurations", 1, nameOf(o.validating)...)
			for l := range strings.SplitSeq(r.template(), "\n") {
				if l = strings.TrimSpace(l); strings.Contains(l, "caBundle") && !strings.HasPrefix(l, "#") {
					t.Errorf("the output sets caBundle (%q): helm upgrade would fight the controller over it", l)
				}
			}
		})
	}
}

func nameOf[T any, P interface {
	*T
	GetName() string
}](list []P) []string {
	var out []string
	for _, o := range list {
		out = append(out, o.GetName())
	}
	return out
}

// TestControllerDeployment: replicas, PDB, anti-affinity, probes on the
// metrics port, the downward-API env, and the injector config mounted
// where --injector-config points.
func TestControllerDeployment(t *testing.T) {
	for _, c := range []struct {
		name     string
		file     string
		sets     []string
		replicas int32
		pdb      bool
	}{
		{"default", "", nil, 2, true},
		{"full", fullValues, nil, 3, true},
		{"one replica", "", []string{"controller.replicas=1"}, 1, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			o := decode(t, mustRender(t, c.file, c.sets...))
			d := o.deployments[0]
			if d.Name != "mesh-controller" || d.Spec.Replicas == nil || *d.Spec.Replicas != c.replicas {
				t.Errorf("Deployment %s replicas %v; want mesh-controller with %d", d.Name, d.Spec.Replicas, c.replicas)
			}
			if got := len(o.pdbs) == 1; got != c.pdb {
				t.Fatalf("PodDisruptionBudget rendered: %v; want %v (minAvailable 1 with one replica blocks drains)", got, c.pdb)
			}
			sel := d.Spec.Selector.MatchLabels
			for k, v := range sel {
				if d.Spec.Template.Labels[k] != v {
					t.Errorf("pod template label %s=%q; the selector wants %q", k, d.Spec.Template.Labels[k], v)
				}
			}
			if c.pdb {
				p := o.pdbs[0]
				if p.Spec.MinAvailable == nil || p.Spec.MinAvailable.IntValue() != 1 || !maps.Equal(p.Spec.Selector.MatchLabels, sel) {
					t.Errorf("PDB minAvailable %v selector %v; want 1 and the Deployment's selector %v", p.Spec.MinAvailable, p.Spec.Selector.MatchLabels, sel)
				}
			}
			aff := d.Spec.Template.Spec.Affinity
			if aff == nil || aff.PodAntiAffinity == nil || len(aff.PodAntiAffinity.PreferredDuringSchedulingIgnoredDuringExecution) != 1 || len(aff.PodAntiAffinity.RequiredDuringSchedulingIgnoredDuringExecution) != 0 {
				t.Fatalf("affinity %+v; want one preferred pod anti-affinity term", aff)
			}
			term := aff.PodAntiAffinity.PreferredDuringSchedulingIgnoredDuringExecution[0].PodAffinityTerm
			if term.TopologyKey != "kubernetes.io/hostname" || !maps.Equal(term.LabelSelector.MatchLabels, sel) {
				t.Errorf("anti-affinity on %q for %v; want hostname and the controller's selector", term.TopologyKey, term.LabelSelector.MatchLabels)
			}
			if d.Spec.Template.Spec.ServiceAccountName != "mesh-controller" {
				t.Errorf("serviceAccountName %q", d.Spec.Template.Spec.ServiceAccountName)
			}
			ctr := d.Spec.Template.Spec.Containers[0]
			metrics := portNamed(ctr, "http-metrics")
			for _, p := range []struct {
				probe *corev1.Probe
				path  string
			}{{ctr.ReadinessProbe, "/readyz"}, {ctr.LivenessProbe, "/healthz"}} {
				if p.probe == nil || p.probe.HTTPGet == nil || p.probe.HTTPGet.Path != p.path || p.probe.HTTPGet.Port.String() != "http-metrics" {
					t.Errorf("probe %+v; want GET %s on http-metrics", p.probe, p.path)
				}
			}
			if metrics != 15014 || !slices.Contains(ctr.Args, "--metrics-addr=:15014") {
				t.Errorf("http-metrics port %d, args %v; want 15014 on both", metrics, ctr.Args)
			}
			env := map[string]string{}
			for _, e := range ctr.Env {
				if e.ValueFrom != nil && e.ValueFrom.FieldRef != nil {
					env[e.Name] = e.ValueFrom.FieldRef.FieldPath
				}
			}
			if env["POD_NAME"] != "metadata.name" || env["POD_NAMESPACE"] != "metadata.namespace" {
				t.Errorf("downward-API env %v; want POD_NAME and POD_NAMESPACE", env)
			}
			if ctr.Resources.Requests.Memory().IsZero() || ctr.Resources.Limits.Memory().IsZero() {
				t.Errorf("resources %+v; want memory requests and limits", ctr.Resources)
			}
			mounted := false
			for _, m := range ctr.VolumeMounts {
				if m.MountPath == "/etc/mesh/injector" && m.ReadOnly {
					mounted = true
				}
			}
			if !mounted || !slices.Contains(ctr.Args, "--injector-config=/etc/mesh/injector/config.yaml") {
				t.Errorf("the injector config is not mounted read-only where --injector-config points: %+v %v", ctr.VolumeMounts, ctr.Args)
			}
			if d.Spec.Template.Annotations["checksum/injector-config"] == "" {
				t.Error("no checksum/injector-config annotation: a proxy setting change would not roll the controller")
			}
		})
	}
}

// TestUpgradeRolls: a changed value changes the pod template (so helm
// upgrade rolls the controller); an unchanged one does not.
func TestUpgradeRolls(t *testing.T) {
	template := func(sets ...string) string {
		o := decode(t, mustRender(t, "", sets...))
		b, err := yaml.Marshal(o.deployments[0].Spec.Template)
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	base := template()
	if template() != base {
		t.Fatal("two renderings of the same values differ")
	}
	for _, set := range []string{"defaultPolicy=deny", "identity.svidTTL=2h", "proxy.inboundMode=permissive", "proxy.image.tag=v2"} {
		if template(set) == base {
			t.Errorf("--set %s leaves the controller's pod template unchanged: helm upgrade would not roll it", set)
		}
	}
}

// TestServices: the identity Service and the webhook Service, selecting
// the controller's pods on ports its container has.
func TestServices(t *testing.T) {
	o := decode(t, mustRender(t, ""))
	d := o.deployments[0]
	ctr := d.Spec.Template.Spec.Containers[0]
	want := map[string]struct {
		name       string
		port, into int32
	}{
		"mesh-controller": {"grpc-identity", 15012, 15012},
		"mesh-webhook":    {"https-webhook", 443, 9443},
	}
	for _, s := range o.services {
		w, ok := want[s.Name]
		if !ok {
			continue
		}
		delete(want, s.Name)
		if !maps.Equal(s.Spec.Selector, d.Spec.Selector.MatchLabels) {
			t.Errorf("Service %s selects %v; want the controller's %v", s.Name, s.Spec.Selector, d.Spec.Selector.MatchLabels)
		}
		found := false
		for _, p := range s.Spec.Ports {
			if p.Name == w.name && p.Port == w.port && p.TargetPort.IntValue() == int(w.into) {
				found = true
			}
			if portNumbered(ctr, int32(p.TargetPort.IntValue())) == "" {
				t.Errorf("Service %s port %s targets %s, which the controller container does not expose", s.Name, p.Name, p.TargetPort.String())
			}
		}
		if !found {
			t.Errorf("Service %s ports %+v; want %s %d -> %d", s.Name, s.Spec.Ports, w.name, w.port, w.into)
		}
	}
	if len(want) != 0 {
		t.Errorf("missing Services %v", want)
	}
	if !slices.Contains(ctr.Args, "--webhook-addr=:9443") || !slices.Contains(ctr.Args, "--identity-addr=:15012") || !slices.Contains(ctr.Args, "--webhook-service=mesh-webhook") {
		t.Errorf("controller args %v do not listen where the Services point", ctr.Args)
	}
}

func portNamed(c corev1.Container, name string) int32 {
	for _, p := range c.Ports {
		if p.Name == name {
			return p.ContainerPort
		}
	}
	return 0
}

func portNumbered(c corev1.Container, n int32) string {
	for _, p := range c.Ports {
		if p.ContainerPort == n {
			return p.Name
		}
	}
	return ""
}
