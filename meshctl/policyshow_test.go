package meshctl

import (
	"bytes"
	"encoding/json"
	"reflect"
	"strings"
	"testing"

	"github.com/mesh-dev/mesh/proxy"
)

func TestPrintPodPolicies(t *testing.T) {
	backend := proxy.PolicyRef{Namespace: "shop", Name: "backend", Generation: 2}
	res := []PodPolicy{
		{Namespace: "shop", Pod: "a", Current: true,
			Proxy:      &proxy.PolicyInfo{Source: proxy.SourceController, Version: "0123456789abcdef", DefaultMode: "deny", Policies: []proxy.PolicyRef{backend}, Since: checkNow},
			Controller: &ControllerPolicy{Version: "0123456789abcdef", DefaultMode: "deny", Policies: []proxy.PolicyRef{backend}, Warnings: []string{"port name metrics is not declared"}}},
		{Namespace: "shop", Pod: "b", Difference: "lacks shop/backend; version old, the controller's 0123456789ab",
			Proxy:      &proxy.PolicyInfo{Source: proxy.SourceController, Version: "old", DefaultMode: "deny", Policies: []proxy.PolicyRef{}, Since: checkNow},
			Controller: &ControllerPolicy{Version: "0123456789abcdef", DefaultMode: "deny", Policies: []proxy.PolicyRef{backend}}},
		{Namespace: "shop", Pod: "c", Error: "not meshed: the pod has no mesh-proxy container"},
	}
	var out bytes.Buffer
	if err := printPodPolicies(&out, "table", res); err != nil {
		t.Fatal(err)
	}
	want := `POD     SOURCE      DEFAULT  VERSION       SINCE                 CURRENT  POLICIES
shop/a  controller  deny     0123456789ab  2026-11-24T12:00:00Z  yes      shop/backend@2
shop/b  controller  deny     old           2026-11-24T12:00:00Z  no       (none: the default decides)
shop/c  -           -        -             -                     no       -
shop/a: warning: port name metrics is not declared
shop/b: lacks shop/backend; version old, the controller's 0123456789ab
shop/c: not meshed: the pod has no mesh-proxy container
`
	if out.String() != want {
		t.Errorf("table:\n%s\nwant:\n%s", out.String(), want)
	}
	out.Reset()
	if err := printPodPolicies(&out, "json", res); err != nil {
		t.Fatal(err)
	}
	// Several pods: a list, as kubectl prints one ({"items": [...]}).
	var back struct{ Items []PodPolicy }
	if err := json.Unmarshal(out.Bytes(), &back); err != nil || !reflect.DeepEqual(back.Items, res) {
		t.Errorf("json does not read back: %v\n%s", err, out.String())
	}
	// The documented names (docs/meshctl.md).
	for _, k := range []string{`"namespace"`, `"pod"`, `"proxy"`, `"controller"`, `"current"`, `"difference"`, `"error"`, `"source"`, `"version"`, `"defaultMode"`, `"policies"`, `"generation"`} {
		if !strings.Contains(out.String(), k) {
			t.Errorf("json lacks %s", k)
		}
	}
}

// One pod: its object alone, as identity show prints it.
func TestPrintPodPolicyOne(t *testing.T) {
	one := PodPolicy{Namespace: "shop", Pod: "a", Current: true}
	var out bytes.Buffer
	if err := printPodPolicies(&out, "yaml", []PodPolicy{one}); err != nil {
		t.Fatal(err)
	}
	if want := "current: true\nnamespace: shop\npod: a\n"; out.String() != want {
		t.Errorf("yaml of one pod:\n%s\nwant:\n%s", out.String(), want)
	}
}
