package inject

import (
	"encoding/json"
	"reflect"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/mesh-dev/mesh/internal/jsonshape"
	"github.com/mesh-dev/mesh/proxy/probe"
)

// TestProbeActionsMatchKubernetes: the proxy's copies of the probe actions
// (package probe, kept apart from k8s.io/api to keep the proxy small) have
// every field of Kubernetes' under the same JSON name, options and kind. A
// field Kubernetes adds fails here, before a probe using it is injected
// and silently loses it.
func TestProbeActionsMatchKubernetes(t *testing.T) {
	for _, tc := range []struct{ k8s, proxy reflect.Type }{
		{reflect.TypeFor[corev1.HTTPGetAction](), reflect.TypeFor[probe.HTTPGetAction]()},
		{reflect.TypeFor[corev1.TCPSocketAction](), reflect.TypeFor[probe.TCPSocketAction]()},
		{reflect.TypeFor[corev1.GRPCAction](), reflect.TypeFor[probe.GRPCAction]()},
	} {
		if k, p := jsonshape.Fields(tc.k8s), jsonshape.Fields(tc.proxy); !slices.Equal(k, p) {
			t.Errorf("%s has JSON fields\n%q\nbut %s has\n%q", tc.k8s, k, tc.proxy, p)
		}
	}
}

// TestOriginalKeepsEveryField: a probe with every field set reaches the
// proxy as Kubernetes would write it (the same JSON), and the proxy reads
// that JSON back to the same value. Named ports are resolved first.
func TestOriginalKeepsEveryField(t *testing.T) {
	svc, h2, tls := "health", corev1.HTTPProtocolHTTP2, corev1.GRPCProbeModeTLS
	c := &corev1.Container{Name: "web", Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}}}
	tests := []struct {
		name  string
		probe corev1.ProbeHandler
		want  any // the Kubernetes action the proxy must receive, as JSON
	}{
		{"httpGet", corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{
			Path: "/healthz?full=1", Port: intstr.FromString("http"), Scheme: corev1.URISchemeHTTP,
			HTTPHeaders: []corev1.HTTPHeader{{Name: "X-A", Value: "1"}, {Name: "X-B", Value: ""}}, Protocol: &h2,
		}}, &corev1.HTTPGetAction{
			Path: "/healthz?full=1", Port: intstr.FromInt32(8080), Scheme: corev1.URISchemeHTTP,
			HTTPHeaders: []corev1.HTTPHeader{{Name: "X-A", Value: "1"}, {Name: "X-B", Value: ""}}, Protocol: &h2,
		}},
		{"httpGet with defaults", corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Port: intstr.FromInt32(81)}},
			&corev1.HTTPGetAction{Path: "/", Port: intstr.FromInt32(81)}},
		{"tcpSocket", corev1.ProbeHandler{TCPSocket: &corev1.TCPSocketAction{Port: intstr.FromString("http")}},
			&corev1.TCPSocketAction{Port: intstr.FromInt32(8080)}},
		{"grpc with service and mode", corev1.ProbeHandler{GRPC: &corev1.GRPCAction{Port: 9090, Service: &svc, Mode: &tls}},
			&corev1.GRPCAction{Port: 9090, Service: &svc, Mode: &tls}},
		{"grpc without service", corev1.ProbeHandler{GRPC: &corev1.GRPCAction{Port: 9090}},
			&corev1.GRPCAction{Port: 9090}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			orig, why := original(c, &corev1.Probe{ProbeHandler: tc.probe, TimeoutSeconds: 3}, 15020)
			if orig == nil {
				t.Fatalf("not rewritten: %s", why)
			}
			var got any = orig.HTTPGet
			switch {
			case orig.TCPSocket != nil:
				got = orig.TCPSocket
			case orig.GRPC != nil:
				got = orig.GRPC
			}
			gj, err := json.Marshal(got)
			if err != nil {
				t.Fatal(err)
			}
			wj, err := json.Marshal(tc.want)
			if err != nil {
				t.Fatal(err)
			}
			if string(gj) != string(wj) {
				t.Errorf("the proxy receives %s, Kubernetes writes %s", gj, wj)
			}
			all, err := json.Marshal(probe.Probers{"/app-health/web/readyz": *orig})
			if err != nil {
				t.Fatal(err)
			}
			read, err := probe.Parse(all)
			if err != nil {
				t.Fatalf("the proxy refuses %s: %v", all, err)
			}
			if !reflect.DeepEqual(read["/app-health/web/readyz"], *orig) {
				t.Errorf("the proxy reads %s as %+v, want %+v", all, read["/app-health/web/readyz"], *orig)
			}
		})
	}
}

// TestProbeTheProxyRefusesStaysAsItIs: a probe the proxy would refuse
// (h2c over HTTPS, which Kubernetes does not support either) is left to
// the kubelet with a warning, not rewritten: one bad entry would make the
// proxy refuse all of them and never start.
func TestProbeTheProxyRefusesStaysAsItIs(t *testing.T) {
	h2 := corev1.HTTPProtocolHTTP2
	c := &corev1.Container{Name: "web", ReadinessProbe: &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{
		Path: "/healthz", Port: intstr.FromInt32(8080), Scheme: corev1.URISchemeHTTPS, Protocol: &h2,
	}}}}
	probers := probe.Probers{}
	rewrites, warnings := rewriteProbes(c, 15020, probers)
	if len(rewrites) != 0 || len(probers) != 0 {
		t.Fatalf("rewritten: %+v, probers %+v", rewrites, probers)
	}
	if len(warnings) != 1 || !strings.Contains(warnings[0], "container web: readinessProbe not rewritten: probe: entry \"/app-health/web/readyz\": httpGet.protocol HTTP2 is cleartext HTTP/2 (h2c) and needs scheme HTTP") {
		t.Fatalf("warnings %q", warnings)
	}
}
