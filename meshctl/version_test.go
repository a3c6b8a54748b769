package meshctl

import (
	"bytes"
	"encoding/json"
	"slices"
	"strings"
	"testing"

	"github.com/spf13/cobra"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"
)

func TestImageTag(t *testing.T) {
	for _, tc := range []struct{ ref, tag string }{
		{"ghcr.io/mesh-dev/mesh:0.1.0", "0.1.0"},
		{"localhost:5000/mesh:dev", "dev"},
		{"localhost:5000/mesh", "latest"},
		{"mesh", "latest"},
		{"mesh:1.2@sha256:abcd", "1.2"},
		{"registry:5000/mesh@sha256:abcd", "sha256:abcd"},
		{"", "latest"},
	} {
		if got := imageTag(tc.ref); got != tc.tag {
			t.Errorf("imageTag(%q) = %q, want %q", tc.ref, got, tc.tag)
		}
	}
}

func controllerPod(name, ns, image string, labels map[string]string) *corev1.Pod {
	return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, Labels: labels},
		Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "sidecar", Image: "other:9"}, {Name: "controller", Image: image}}}}
}

func TestControllerTags(t *testing.T) {
	ctl := map[string]string{"app.kubernetes.io/name": "mesh-controller"}
	cs := fake.NewClientset(
		controllerPod("a", "mesh-system", "ghcr.io/mesh-dev/mesh:0.1.0", ctl),
		controllerPod("b", "mesh-system", "ghcr.io/mesh-dev/mesh:0.1.0", ctl),
		controllerPod("c", "mesh-system", "ghcr.io/mesh-dev/mesh:0.2.0", ctl),
		controllerPod("d", "mesh-system", "ghcr.io/mesh-dev/mesh:9.9.9", map[string]string{"app": "other"}),
		controllerPod("e", "mesh", "ghcr.io/mesh-dev/mesh:0.3.0", ctl),
	)
	for _, tc := range []struct {
		ns   string
		tags []string
	}{
		{"mesh-system", []string{"0.1.0", "0.2.0"}},
		{"mesh", []string{"0.3.0"}},
		{"empty", nil},
	} {
		got, err := controllerTags(t.Context(), cs, tc.ns)
		if err != nil || !slices.Equal(got, tc.tags) {
			t.Errorf("%s: %q, %v; want %q", tc.ns, got, err, tc.tags)
		}
	}
}

func TestPrintVersion(t *testing.T) {
	info := VersionInfo{Client: "0.1.0", Controller: "0.2.0", ControllerNamespace: "mesh-system"}
	var b bytes.Buffer
	if err := printVersion(&b, "json", info); err != nil {
		t.Fatal(err)
	}
	var back map[string]string
	if err := json.Unmarshal(b.Bytes(), &back); err != nil || back["client"] != "0.1.0" || back["controller"] != "0.2.0" || back["controllerNamespace"] != "mesh-system" {
		t.Errorf("json %s: %v", b.String(), err)
	}
	b.Reset()
	info.Controller = ""
	if err := printVersion(&b, "table", info); err != nil || !strings.Contains(b.String(), "Controller: not installed") {
		t.Errorf("table %q: %v", b.String(), err)
	}
}

func deploymentWithArgs(args []string) *appsv1.Deployment {
	d := &appsv1.Deployment{}
	d.Spec.Template.Spec.Containers = []corev1.Container{{Name: "controller", Args: args}}
	return d
}

// Every command users run has --help examples, and says what it does.
func TestEveryCommandHasExamples(t *testing.T) {
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		if c.Short == "" {
			t.Errorf("%q has no short description", c.CommandPath())
		}
		if c.Runnable() && !c.HasSubCommands() && c.Name() != "help" && c.Name() != "completion" && !strings.HasPrefix(c.CommandPath(), "meshctl completion") && c.Example == "" {
			t.Errorf("%q has no --help examples", c.CommandPath())
		}
		for _, sub := range c.Commands() {
			walk(sub)
		}
	}
	root := New()
	root.InitDefaultCompletionCmd()
	walk(root)
}
