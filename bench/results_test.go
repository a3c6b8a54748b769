package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// lowerCamel is the shape of controlPlane's keys in results.json.
var lowerCamel = regexp.MustCompile(`^[a-z][a-zA-Z0-9]*$`)

// TestControlPlaneJSONKeys: every key under controlPlane is lower camel
// case, as p99Ms is; a field added without a JSON tag shows up here with
// its Go name. Every part is filled in, FirstError and Skipped included,
// so no omitempty field hides.
func TestControlPlaneJSONKeys(t *testing.T) {
	cp := cpFixture()
	cp.SVID.FirstError = "x"
	cp.Push.FirstError = "y"
	cp.Skipped = map[string]string{scenarioCertify: "z"}
	b, err := json.Marshal(cp)
	if err != nil {
		t.Fatal(err)
	}
	var doc any
	if err := json.Unmarshal(b, &doc); err != nil {
		t.Fatal(err)
	}
	keys := map[string]bool{}
	walkKeys(doc, "controlPlane", func(path, key string) {
		keys[path+"."+key] = true
		if !lowerCamel.MatchString(key) {
			t.Errorf("results.json key %s.%s is not lower camel case", path, key)
		}
	})
	// The ones that had Go's names before; a regression would bring
	// LastAckP99Ms back.
	for _, k := range []string{"push.lastAckP50Ms", "push.lastAckP99Ms", "push.ackP99Ms", "push.controllerHeapMiB", "push.ctlGoroutines", "push.firstError", "push.failures", "svid.p99Ms", "certify[].p99Ms"} {
		if !keys["controlPlane."+k] {
			t.Errorf("results.json lacks controlPlane.%s; it has %v", k, slices.Sorted(maps.Keys(keys)))
		}
	}
}

// TestCommittedResults: the committed bench/results.json reads back into
// Results with every key spelled as the harness writes it now (the JSON
// decoder matches keys case-insensitively, so decoding alone would
// accept stale names) and every value kept; and the figures read from it
// make the generated part of docs/benchmarks.md as committed.
func TestCommittedResults(t *testing.T) {
	committed, err := os.ReadFile("results.json")
	if err != nil {
		t.Fatal(err)
	}
	var r Results
	if err := json.Unmarshal(committed, &r); err != nil {
		t.Fatalf("results.json: %v", err)
	}
	if r.ControlPlane == nil || r.ControlPlane.push() == nil || r.ControlPlane.svid() == nil || len(r.ControlPlane.Certify) == 0 {
		t.Fatalf("results.json has no control-plane figures: %+v", r.ControlPlane)
	}
	rewritten, err := json.Marshal(&r)
	if err != nil {
		t.Fatal(err)
	}
	var want, got any
	if err := json.Unmarshal(committed, &want); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(rewritten, &got); err != nil {
		t.Fatal(err)
	}
	for _, d := range missingFrom(want, got, "") {
		t.Errorf("results.json: %s", d)
	}

	doc, err := os.ReadFile("../docs/benchmarks.md")
	if err != nil {
		t.Fatal(err)
	}
	i, j := bytes.Index(doc, []byte(beginMarker)), bytes.Index(doc, []byte(endMarker))
	if i < 0 || j < i {
		t.Fatal("docs/benchmarks.md has no generated part")
	}
	section := string(doc[i+len(beginMarker)+1 : j])
	if md := r.markdown(); md != section {
		t.Errorf("docs/benchmarks.md's generated part is not what results.json makes:\n%s", lineDiff(section, md))
	}
}

// TestMissingFrom checks the comparison TestCommittedResults relies on.
func TestMissingFrom(t *testing.T) {
	parse := func(s string) any {
		var v any
		if err := json.Unmarshal([]byte(s), &v); err != nil {
			t.Fatal(err)
		}
		return v
	}
	tests := []struct {
		name, want, got string
		diffs           []string
	}{
		{"same", `{"a":{"b":[1,{"c":"x"}]}}`, `{"a":{"b":[1,{"c":"x"}]}}`, nil},
		{"extra keys written are fine", `{"a":1}`, `{"a":1,"b":2}`, nil},
		{"key case", `{"push":{"LastAckP99Ms":1}}`, `{"push":{"lastAckP99Ms":1}}`, []string{"push.LastAckP99Ms: not written back"}},
		{"value", `{"a":[1,2]}`, `{"a":[1,3]}`, []string{"a[1]: 2 written back as 3"}},
		{"array length", `{"a":[1,2]}`, `{"a":[1]}`, []string{"a: 2 elements written back as 1"}},
		{"kind", `{"a":{"b":1}}`, `{"a":[1]}`, []string{"a: map[string]interface {} written back as []interface {}"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if d := missingFrom(parse(tc.want), parse(tc.got), ""); !slices.Equal(d, tc.diffs) {
				t.Errorf("missingFrom = %q, want %q", d, tc.diffs)
			}
		})
	}
}

// missingFrom lists where got, a re-encoding of want, lost a key (by its
// exact spelling) or changed a value. Keys only got has are fine: a field
// added since the run.
func missingFrom(want, got any, path string) []string {
	switch w := want.(type) {
	case map[string]any:
		g, ok := got.(map[string]any)
		if !ok {
			return []string{fmt.Sprintf("%s: %T written back as %T", path, want, got)}
		}
		var out []string
		for _, k := range slices.Sorted(maps.Keys(w)) {
			p := strings.TrimPrefix(path+"."+k, ".")
			gv, ok := g[k]
			if !ok {
				out = append(out, p+": not written back")
				continue
			}
			out = append(out, missingFrom(w[k], gv, p)...)
		}
		return out
	case []any:
		g, ok := got.([]any)
		if !ok {
			return []string{fmt.Sprintf("%s: %T written back as %T", path, want, got)}
		}
		if len(g) != len(w) {
			return []string{fmt.Sprintf("%s: %d elements written back as %d", path, len(w), len(g))}
		}
		var out []string
		for i := range w {
			out = append(out, missingFrom(w[i], g[i], fmt.Sprintf("%s[%d]", path, i))...)
		}
		return out
	default:
		if !reflect.DeepEqual(want, got) {
			return []string{fmt.Sprintf("%s: %v written back as %v", path, want, got)}
		}
		return nil
	}
}

// walkKeys calls f with every object key under v and the path to its
// object; array elements share the path name[].
func walkKeys(v any, path string, f func(path, key string)) {
	switch x := v.(type) {
	case map[string]any:
		for _, k := range slices.Sorted(maps.Keys(x)) {
			f(path, k)
			walkKeys(x[k], path+"."+k, f)
		}
	case []any:
		for _, e := range x {
			walkKeys(e, path+"[]", f)
		}
	}
}

// lineDiff shows the first lines where want and got differ.
func lineDiff(want, got string) string {
	w, g := strings.Split(want, "\n"), strings.Split(got, "\n")
	var b strings.Builder
	shown := 0
	for i := 0; i < max(len(w), len(g)) && shown < 10; i++ {
		var wl, gl string
		if i < len(w) {
			wl = w[i]
		}
		if i < len(g) {
			gl = g[i]
		}
		if wl != gl {
			fmt.Fprintf(&b, "line %d:\n  committed: %q\n  generated: %q\n", i+1, wl, gl)
			shown++
		}
	}
	return b.String()
}

// TestResultsJSONTags: every field of every struct results.json is made
// of has a lower-camel JSON name of its own, so a field added without a
// tag fails here rather than appearing in results.json under its Go name.
func TestResultsJSONTags(t *testing.T) {
	seen := map[reflect.Type]bool{}
	var walk func(reflect.Type, string)
	walk = func(ty reflect.Type, path string) {
		switch ty.Kind() {
		case reflect.Pointer, reflect.Slice, reflect.Array, reflect.Map:
			walk(ty.Elem(), path+"[]")
			return
		case reflect.Struct:
		default:
			return
		}
		if seen[ty] {
			return
		}
		seen[ty] = true
		for f := range ty.Fields() {
			if !f.IsExported() {
				continue
			}
			name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
			if name == "-" {
				continue
			}
			if !lowerCamel.MatchString(name) {
				t.Errorf("%s.%s has JSON name %q; want a lower-camel json tag", path, f.Name, name)
			}
			walk(f.Type, path+"."+f.Name)
		}
	}
	walk(reflect.TypeFor[Results](), "Results")
	if len(seen) < 5 {
		t.Fatalf("walked only %d struct types: the walk is broken", len(seen))
	}
}
