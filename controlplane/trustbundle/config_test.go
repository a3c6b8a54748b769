package trustbundle

import (
	"crypto/x509"
	"encoding/pem"
	"reflect"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/mesh-dev/mesh/internal/testpki"
)

type staticSource []*x509.Certificate

func (s staticSource) Bundle() []*x509.Certificate { return s }
func (s staticSource) Updated() <-chan struct{}    { return nil }

// TestNewRefuses checks every required field and the namespace names.
func TestNewRefuses(t *testing.T) {
	// A client for an address nothing listens on: New must not use it.
	cs, err := kubernetes.NewForConfig(&rest.Config{Host: "https://198.18.0.1:6443"})
	if err != nil {
		t.Fatal(err)
	}
	factory := informers.NewSharedInformerFactory(cs, 0)
	src := staticSource{}
	cases := []struct {
		name string
		cfg  Config
		want string
	}{
		{"no client", Config{Informers: factory, Bundle: src}, "trustbundle: Config.Kube is required"},
		{"no informers", Config{Kube: cs, Bundle: src}, "trustbundle: Config.Informers is required"},
		{"no bundle", Config{Kube: cs, Informers: factory}, "trustbundle: Config.Bundle is required"},
		{"upper case namespace", Config{Kube: cs, Informers: factory, Bundle: src, Namespaces: []string{"mesh-system", "Mesh"}},
			`trustbundle: Config.Namespaces: "Mesh" is not a namespace name: a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')`},
		{"path in namespace", Config{Kube: cs, Informers: factory, Bundle: src, Namespaces: []string{"../kube-system"}},
			`trustbundle: Config.Namespaces: "../kube-system" is not a namespace name: a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')`},
		{"empty namespace", Config{Kube: cs, Informers: factory, Bundle: src, Namespaces: []string{""}},
			`trustbundle: Config.Namespaces: "" is not a namespace name: a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p, err := New(tc.cfg)
			if err == nil || err.Error() != tc.want {
				t.Fatalf("New: %v, %v\nwant error %s", p, err, tc.want)
			}
		})
	}

	// Registering the metrics twice in one registry is refused, not a panic.
	reg := prometheus.NewRegistry()
	good := Config{Kube: cs, Informers: factory, Bundle: src, Registerer: reg}
	if _, err := New(good); err != nil {
		t.Fatal(err)
	}
	if _, err := New(good); err == nil {
		t.Fatal("a second Publisher registered its metrics in the same registry")
	}
}

// TestEncode checks the PEM the ConfigMap holds: every root in order, and
// no bundle a proxy could not use.
func TestEncode(t *testing.T) {
	r1 := testpki.New(t, "cluster.local").CA.Bundle()[0]
	r2 := testpki.New(t, "cluster.local").CA.Bundle()[0]
	block := func(c *x509.Certificate) string {
		return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw}))
	}
	cases := []struct {
		name    string
		roots   []*x509.Certificate
		want    string
		wantErr string
	}{
		{name: "one", roots: []*x509.Certificate{r1}, want: block(r1)},
		{name: "in order", roots: []*x509.Certificate{r2, r1}, want: block(r2) + block(r1)},
		{name: "nil", wantErr: "trustbundle: the bundle has no roots"},
		{name: "empty", roots: []*x509.Certificate{}, wantErr: "trustbundle: the bundle has no roots"},
		{name: "nil root", roots: []*x509.Certificate{r1, nil}, wantErr: "trustbundle: root 2 of 2 has no DER"},
		{name: "no DER", roots: []*x509.Certificate{{Subject: r1.Subject}, r2}, wantErr: "trustbundle: root 1 of 2 has no DER"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := encode(tc.roots)
			if tc.wantErr != "" {
				if err == nil || err.Error() != tc.wantErr {
					t.Fatalf("encode: %q, %v; want error %s", got, err, tc.wantErr)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("encode: %q, %v; want %q", got, err, tc.want)
			}
		})
	}
}

// TestDesiredIsCurrent: what desired writes is current, whatever the
// ConfigMap held before; and current notices each way it can differ.
func TestDesiredIsCurrent(t *testing.T) {
	yes, no := true, false
	const data = "PEM"
	ours := func() *corev1.ConfigMap {
		return &corev1.ConfigMap{
			ObjectMeta: metav1.ObjectMeta{Name: ConfigMapName, Namespace: "ns", ResourceVersion: "7", Labels: map[string]string{ManagedByLabel: ManagedBy, "team": "a"}},
			Data:       map[string]string{Key: data},
		}
	}
	cases := []struct {
		name    string
		edit    func(*corev1.ConfigMap)
		current bool
	}{
		{"ours", func(*corev1.ConfigMap) {}, true},
		{"mutable said", func(cm *corev1.ConfigMap) { cm.Immutable = &no }, true},
		{"other data", func(cm *corev1.ConfigMap) { cm.Data[Key] = "other" }, false},
		{"no key", func(cm *corev1.ConfigMap) { cm.Data = nil }, false},
		{"extra key", func(cm *corev1.ConfigMap) { cm.Data["x"] = "" }, false},
		{"binary key", func(cm *corev1.ConfigMap) { cm.BinaryData = map[string][]byte{"x": nil} }, false},
		{"no labels", func(cm *corev1.ConfigMap) { cm.Labels = nil }, false},
		{"other manager", func(cm *corev1.ConfigMap) { cm.Labels[ManagedByLabel] = "helm" }, false},
		{"immutable", func(cm *corev1.ConfigMap) { cm.Immutable = &yes }, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cm := ours()
			tc.edit(cm)
			if got := current(cm, data); got != tc.current {
				t.Fatalf("current: %v, want %v", got, tc.current)
			}
			before := cm.DeepCopy()
			d := desired("ns", cm, data)
			if !current(d, data) {
				t.Fatalf("desired is not current: %+v", d)
			}
			if d.Name != ConfigMapName || d.Namespace != "ns" || (cm.Labels != nil && d.Labels["team"] != "a") {
				t.Fatalf("desired lost the name or the owner's labels: %+v", d.ObjectMeta)
			}
			// An update keeps the resourceVersion (so a stale cache
			// conflicts); a replacement of an immutable one is new.
			if replace := cm.Immutable != nil && *cm.Immutable; (d.ResourceVersion == "") != replace {
				t.Fatalf("resourceVersion %q for immutable=%v", d.ResourceVersion, replace)
			}
			if !reflect.DeepEqual(before, cm) {
				t.Fatal("desired changed the cached ConfigMap")
			}
		})
	}
	if d := desired("ns", nil, data); !current(d, data) || d.Namespace != "ns" || d.ResourceVersion != "" {
		t.Fatalf("desired for a new ConfigMap: %+v", d)
	}
}
