// Package jsonshape lists a Go type's JSON fields, for tests that keep
// mesh's own copies of Kubernetes types (the proxy's probe actions,
// authz's policy model) field for field with the originals: the copies
// exist so that the proxy does not link Kubernetes' packages, and a field
// Kubernetes or the CRD adds must fail a test, not vanish in a copy.
package jsonshape

import (
	"reflect"
	"slices"
	"strings"

	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/mesh-dev/mesh/internal/intorstr"
)

// Fields is t's fields as JSON names with their tags and kinds, sorted,
// recursively through struct, pointer and slice fields.
// intstr.IntOrString and intorstr.IntOrString are values (they marshal
// themselves).
func Fields(t reflect.Type) []string { return fields(t, "") }

func fields(t reflect.Type, prefix string) []string {
	for t.Kind() == reflect.Pointer || t.Kind() == reflect.Slice {
		t = t.Elem()
	}
	if t.Kind() != reflect.Struct || t == reflect.TypeFor[intstr.IntOrString]() || t == reflect.TypeFor[intorstr.IntOrString]() {
		return nil
	}
	var out []string
	for f := range t.Fields() {
		tag := f.Tag.Get("json")
		out = append(out, prefix+tag+" "+f.Type.Kind().String())
		name, _, _ := strings.Cut(tag, ",")
		out = append(out, fields(f.Type, prefix+name+".")...)
	}
	slices.Sort(out)
	return out
}
