package meshctl

import (
	"fmt"
	"slices"
	"strings"
	"testing"

	apimeta "k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"sigs.k8s.io/yaml"

	"github.com/mesh-dev/mesh/internal/chartrender"
)

// chartCreates is what `helm install --create-namespace mesh charts/mesh`
// creates, rendered by Helm's own libraries with the default values and
// with charts' full values file (which turns every option on): the
// templates' objects, the CRDs of crds/, and the namespace.
func chartCreates(t *testing.T) []chartResource {
	t.Helper()
	const ns = "mesh-system"
	ch, err := chartrender.Load("../charts/mesh")
	if err != nil {
		t.Fatal(err)
	}
	var created []chartResource
	add := func(where, content string) {
		var head struct {
			metav1.TypeMeta   `json:",inline"`
			metav1.ObjectMeta `json:"metadata"`
		}
		if err := yaml.Unmarshal([]byte(content), &head); err != nil {
			t.Fatalf("%s: %v", where, err)
		}
		gv, err := schema.ParseGroupVersion(head.APIVersion)
		if err != nil || head.Kind == "" {
			t.Fatalf("%s: apiVersion %q kind %q: %v", where, head.APIVersion, head.Kind, err)
		}
		if head.Namespace != "" && head.Namespace != ns {
			t.Fatalf("%s: %s %s in namespace %q, not the release's", where, head.Kind, head.Name, head.Namespace)
		}
		plural, _ := apimeta.UnsafeGuessKindToResource(gv.WithKind(head.Kind))
		// The chart names the namespace of every namespaced object;
		// helm install puts one that names none in the release's too,
		// so an object without one is cluster-scoped only if its kind
		// is: this test then fails on the scope, which is to be checked.
		r := chartResource{group: gv.Group, resource: plural.Resource, kind: head.Kind + "s", namespaced: head.Namespace != ""}
		if !slices.Contains(created, r) {
			created = append(created, r)
		}
	}
	for _, file := range []string{"", "../charts/testdata/full-values.yaml"} {
		vals, err := chartrender.Values(file, nil)
		if err != nil {
			t.Fatal(err)
		}
		r, err := chartrender.Render(ch, "mesh", ns, vals)
		if err != nil {
			t.Fatalf("rendering with values %q: %v", file, err)
		}
		for _, m := range r.Manifests {
			add(m.Name, m.Content)
		}
	}
	for _, crd := range ch.CRDObjects() {
		add(crd.Filename, string(crd.File.Data))
	}
	// --create-namespace: helm creates it, not a template.
	created = append(created, chartResource{"", "namespaces", "Namespaces", false})
	return created
}

// TestChartResources: check --pre asks for create on exactly what the
// chart creates, at the scope it creates it: a Role added to the chart and
// not to chartResources would let --pre pass and helm install fail.
func TestChartResources(t *testing.T) {
	created := chartCreates(t)
	show := func(r chartResource) string {
		scope := "cluster-wide"
		if r.namespaced {
			scope = "namespaced"
		}
		res := r.resource
		if r.group != "" {
			res += "." + r.group
		}
		return fmt.Sprintf("%s (%s, %s)", r.kind, res, scope)
	}
	var missing, extra []string
	for _, r := range created {
		if !slices.Contains(chartResources, r) {
			missing = append(missing, show(r))
		}
	}
	for _, r := range chartResources {
		if !slices.Contains(created, r) {
			extra = append(extra, show(r))
		}
	}
	if len(missing) > 0 {
		t.Errorf("the chart creates what chartResources lacks: %s", strings.Join(missing, "; "))
	}
	if len(extra) > 0 {
		t.Errorf("chartResources lists what the chart does not create: %s", strings.Join(extra, "; "))
	}
	for i, r := range chartResources {
		if slices.Contains(chartResources[:i], r) {
			t.Errorf("chartResources lists %s twice", show(r))
		}
	}
}
