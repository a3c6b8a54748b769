package policystatus_test

import (
	"math"
	"strings"
	"testing"
	"time"

	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"

	"github.com/mesh-dev/mesh/authz/api/v1alpha1"

	"github.com/mesh-dev/mesh/authz/api/v1alpha1/policyclient"
	"github.com/mesh-dev/mesh/controlplane/policystatus"
)

// Clients for an address nothing listens on: constructors only keep them.
func offline(t *testing.T) (kubernetes.Interface, *policyclient.Client) {
	t.Helper()
	cfg := &rest.Config{Host: "https://127.0.0.1:1"}
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	pc, err := policyclient.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return cs, pc
}

func TestNewReporterRefuses(t *testing.T) {
	cs, _ := offline(t)
	src := newSource(nil)
	good := func() policystatus.ReporterConfig {
		return policystatus.ReporterConfig{Kube: cs, Namespace: "mesh-system", Replica: "mesh-controller-0", Source: src}
	}
	if _, err := policystatus.NewReporter(good()); err != nil {
		t.Fatalf("a good config: %v", err)
	}
	tests := []struct {
		name   string
		change func(*policystatus.ReporterConfig)
		want   string
	}{
		{"no client", func(c *policystatus.ReporterConfig) { c.Kube = nil }, "policystatus: ReporterConfig.Kube is required"},
		{"no source", func(c *policystatus.ReporterConfig) { c.Source = nil }, "policystatus: ReporterConfig.Source is required"},
		{"no replica", func(c *policystatus.ReporterConfig) { c.Replica = "" }, "policystatus: ReporterConfig.Replica is required"},
		{"no namespace", func(c *policystatus.ReporterConfig) { c.Namespace = "" }, `policystatus: ReporterConfig.Namespace "": `},
		{"bad namespace", func(c *policystatus.ReporterConfig) { c.Namespace = "Mesh_System" }, `policystatus: ReporterConfig.Namespace "Mesh_System": `},
		{"replica not a name", func(c *policystatus.ReporterConfig) { c.Replica = "../ctl" }, `policystatus: ReporterConfig.Replica "../ctl" makes ConfigMap name "mesh-enforcement-../ctl": `},
		{"replica too long", func(c *policystatus.ReporterConfig) { c.Replica = strings.Repeat("a", 250) }, `makes ConfigMap name`},
		{"negative interval", func(c *policystatus.ReporterConfig) { c.MinInterval = -time.Second }, "policystatus: ReporterConfig: negative MinInterval"},
		{"heartbeat below interval", func(c *policystatus.ReporterConfig) { c.MinInterval, c.Heartbeat = 5*time.Second, time.Second },
			"policystatus: ReporterConfig.Heartbeat 1s is below MinInterval 5s"},
		// The defaults are 1s and 10s: a MinInterval above 10s needs a
		// Heartbeat too.
		{"interval above default heartbeat", func(c *policystatus.ReporterConfig) { c.MinInterval = time.Minute },
			"policystatus: ReporterConfig.Heartbeat 10s is below MinInterval 1m0s"},
	}
	for _, tt := range tests {
		cfg := good()
		tt.change(&cfg)
		if _, err := policystatus.NewReporter(cfg); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: NewReporter = %v, want an error containing %q", tt.name, err, tt.want)
		}
	}
}

func TestNewWriterRefuses(t *testing.T) {
	cs, pc := offline(t)
	good := func() policystatus.WriterConfig {
		return policystatus.WriterConfig{Policies: pc, PolicyInformer: policyclient.NewInformer(pc, 0),
			Informers: informers.NewSharedInformerFactory(cs, 0), Namespace: "mesh-system"}
	}
	if _, err := policystatus.NewWriter(good()); err != nil {
		t.Fatalf("a good config: %v", err)
	}
	tests := []struct {
		name   string
		change func(*policystatus.WriterConfig)
		want   string
	}{
		{"no client", func(c *policystatus.WriterConfig) { c.Policies = nil }, "policystatus: WriterConfig.Policies is required"},
		{"no policy informer", func(c *policystatus.WriterConfig) { c.PolicyInformer = nil }, "policystatus: WriterConfig.PolicyInformer is required"},
		{"no factory", func(c *policystatus.WriterConfig) { c.Informers = nil }, "policystatus: WriterConfig.Informers is required"},
		{"bad namespace", func(c *policystatus.WriterConfig) { c.Namespace = "" }, `policystatus: WriterConfig.Namespace "": `},
		{"negative staleness", func(c *policystatus.WriterConfig) { c.StaleAfter = -1 }, "policystatus: WriterConfig.StaleAfter -1ns is negative"},
		{"negative rate", func(c *policystatus.WriterConfig) { c.MaxWritesPerSecond = -1 }, "policystatus: WriterConfig.MaxWritesPerSecond -1 is not a positive rate"},
		{"NaN rate", func(c *policystatus.WriterConfig) { c.MaxWritesPerSecond = math.NaN() }, "policystatus: WriterConfig.MaxWritesPerSecond NaN is not a positive rate"},
		{"infinite rate", func(c *policystatus.WriterConfig) { c.MaxWritesPerSecond = math.Inf(1) }, "policystatus: WriterConfig.MaxWritesPerSecond +Inf is not a positive rate"},
	}
	for _, tt := range tests {
		cfg := good()
		tt.change(&cfg)
		if _, err := policystatus.NewWriter(cfg); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: NewWriter = %v, want an error containing %q", tt.name, err, tt.want)
		}
	}
}

// TestNewWriterAddsNamespaceIndex: a policy informer without the
// namespace index gets it, so pod changes find their policies.
func TestNewWriterAddsNamespaceIndex(t *testing.T) {
	cs, pc := offline(t)
	inf := cache.NewSharedIndexInformer(&cache.ListWatch{}, &v1alpha1.AuthorizationPolicy{}, 0, cache.Indexers{})
	if _, err := policystatus.NewWriter(policystatus.WriterConfig{Policies: pc, PolicyInformer: inf,
		Informers: informers.NewSharedInformerFactory(cs, 0), Namespace: "mesh-system"}); err != nil {
		t.Fatal(err)
	}
	if _, ok := inf.GetIndexer().GetIndexers()[cache.NamespaceIndex]; !ok {
		t.Error("no namespace index added")
	}
}
