package charts

import (
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	"sigs.k8s.io/yaml"

	"github.com/mesh-dev/mesh/authz"
	"github.com/mesh-dev/mesh/authz/api/v1alpha1"
	"github.com/mesh-dev/mesh/meshcontroller"
	"github.com/mesh-dev/mesh/proxy/normalize"
)

// injectorConfig is the injector configuration file's shape as agreed with
// the controller's webhook (issue 12): decoding strictly into it catches a
// key the controller would refuse. Replace it with the controller's own
// type once that exists.
type injectorConfig struct {
	ProxyImage           string                      `json:"proxyImage"`
	ProxyImagePullPolicy corev1.PullPolicy           `json:"proxyImagePullPolicy"`
	ProxyUID             int64                       `json:"proxyUID"`
	IdentityAddr         string                      `json:"identityAddr"`
	TokenAudience        string                      `json:"tokenAudience"`
	InboundMode          string                      `json:"inboundMode"`
	OutboundMode         string                      `json:"outboundMode"`
	AdminPort            int32                       `json:"adminPort"`
	InboundPort          int32                       `json:"inboundPort"`
	OutboundPort         int32                       `json:"outboundPort"`
	LogLevel             string                      `json:"logLevel"`
	LogFormat            string                      `json:"logFormat"`
	PathNormalization    string                      `json:"pathNormalization"`
	Resources            corev1.ResourceRequirements `json:"resources"`
	Audit                struct {
		Enabled            bool   `json:"enabled"`
		CheckpointInterval string `json:"checkpointInterval"`
	} `json:"audit"`
	ExcludeInboundPorts  []string `json:"excludeInboundPorts"`
	ExcludeOutboundPorts []string `json:"excludeOutboundPorts"`
}

// TestInjectorConfig: the ConfigMap the controller reads carries every
// proxy value, in the agreed shape.
func TestInjectorConfig(t *testing.T) {
	full := injectorConfig{
		ProxyImage: "registry.example.com/mesh/mesh-proxy:v0.1.0-rc.2", ProxyImagePullPolicy: corev1.PullAlways, ProxyUID: 2102,
		IdentityAddr: "mesh-controller.mesh-system.svc:15012", TokenAudience: "identity.mesh.dev",
		InboundMode: "permissive", OutboundMode: "strict", AdminPort: 15120, InboundPort: 15106, OutboundPort: 15101,
		LogLevel: "debug", LogFormat: "text", PathNormalization: "DECODE_AND_MERGE_SLASHES",
		Resources: corev1.ResourceRequirements{
			Requests: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("20m"), corev1.ResourceMemory: resource.MustParse("32Mi")},
			Limits:   corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("500m"), corev1.ResourceMemory: resource.MustParse("128Mi")},
		},
		ExcludeInboundPorts: []string{"3306", "5432"}, ExcludeOutboundPorts: []string{"6379"},
	}
	full.Audit.Enabled, full.Audit.CheckpointInterval = false, "1m30s"
	def := injectorConfig{
		ProxyImage: "ghcr.io/mesh-dev/mesh-proxy:0.1.0", ProxyImagePullPolicy: corev1.PullIfNotPresent, ProxyUID: 1337,
		IdentityAddr: "mesh-controller.mesh-system.svc:15012", TokenAudience: "identity.mesh.dev",
		InboundMode: "strict", OutboundMode: "permissive", AdminPort: 15020, InboundPort: 15006, OutboundPort: 15001,
		LogLevel: "info", LogFormat: "json", PathNormalization: "MERGE_SLASHES",
		Resources: corev1.ResourceRequirements{
			Requests: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("50m"), corev1.ResourceMemory: resource.MustParse("64Mi")},
			Limits:   corev1.ResourceList{corev1.ResourceMemory: resource.MustParse("256Mi")},
		},
		ExcludeInboundPorts: []string{}, ExcludeOutboundPorts: []string{},
	}
	def.Audit.Enabled, def.Audit.CheckpointInterval = true, "10s"
	for _, c := range []struct {
		name, file string
		want       injectorConfig
	}{{"default", "", def}, {"full", fullValues, full}} {
		t.Run(c.name, func(t *testing.T) {
			o := decode(t, mustRender(t, c.file))
			cm := o.configMaps[0]
			if cm.Name != "mesh-injector" || len(cm.Data) != 1 {
				t.Fatalf("ConfigMap %s with keys %d; want mesh-injector with config.yaml only", cm.Name, len(cm.Data))
			}
			var got injectorConfig
			if err := yaml.UnmarshalStrict([]byte(cm.Data["config.yaml"]), &got); err != nil {
				t.Fatalf("config.yaml: %v\n%s", err, cm.Data["config.yaml"])
			}
			gb, _ := yaml.Marshal(got)
			wb, _ := yaml.Marshal(c.want)
			if string(gb) != string(wb) {
				t.Errorf("config.yaml:\n%s\nwant:\n%s", gb, wb)
			}
			// The values mean what the proxy's own parsers accept.
			if _, err := normalize.ParseMode(got.PathNormalization); err != nil {
				t.Error(err)
			}
			if _, err := time.ParseDuration(got.Audit.CheckpointInterval); err != nil {
				t.Error(err)
			}
		})
	}
}

// webhookFlags are the controller flags the injection webhook work adds
// (issue 12). Until meshcontroller defines them, TestControllerArgs accepts
// them by name only; once it does, they are parsed like the others.
var webhookFlags = map[string]bool{
	"webhook-addr": true, "webhook-service": true, "mutating-webhook": true, "validating-webhook": true, "injector-config": true,
}

// TestControllerArgs: the Deployment's args are the controller's real
// flags, parsed by its own flag set, with the values the chart meant.
func TestControllerArgs(t *testing.T) {
	for _, c := range []struct {
		name, file string
		want       map[string]string
	}{
		{"default", "", map[string]string{
			"trust-domain": "cluster.local", "namespace": releaseNS, "service-account": "mesh-controller",
			"ca-secret": "mesh-ca", "existing-secret": "false", "identity-addr": ":15012", "metrics-addr": ":15014",
			"svid-ttl": "1h0m0s", "max-svid-ttl": "24h0m0s", "default-policy": "allow-mesh", "replica": "mesh-controller-5d8f9-abcde",
			"leader-lease-duration": "15s", "leader-renew-deadline": "10s", "leader-retry-period": "2s",
			"webhook-addr": ":9443", "webhook-service": "mesh-webhook", "mutating-webhook": "mesh-injector",
			"validating-webhook": "mesh-policy-validator", "injector-config": "/etc/mesh/injector/config.yaml",
		}},
		{"full", fullValues, map[string]string{
			"trust-domain": "prod.example.com", "ca-secret": "corp-mesh-ca", "existing-secret": "true",
			"svid-ttl": "30m0s", "max-svid-ttl": "12h0m0s", "default-policy": "deny",
			"leader-lease-duration": "30s", "leader-renew-deadline": "20s", "leader-retry-period": "4s",
		}},
	} {
		t.Run(c.name, func(t *testing.T) {
			d := decode(t, mustRender(t, c.file)).deployments[0]
			args := d.Spec.Template.Spec.Containers[0].Args
			flags := meshcontroller.New().Flags()
			var known []string
			given := map[string]string{}
			for _, a := range args {
				// The kubelet expands $(POD_NAME) from the container's env.
				a = strings.ReplaceAll(a, "$(POD_NAME)", "mesh-controller-5d8f9-abcde")
				name, value, hasValue := strings.Cut(strings.TrimPrefix(a, "--"), "=")
				if !strings.HasPrefix(a, "--") {
					t.Errorf("argument %q is not a flag", a)
					continue
				}
				if !hasValue {
					value = "true"
				}
				given[name] = value
				if flags.Lookup(name) == nil {
					if !webhookFlags[name] {
						t.Errorf("--%s is not a mesh-controller flag", name)
					}
					continue
				}
				known = append(known, a)
			}
			if err := flags.Parse(known); err != nil {
				t.Fatalf("mesh-controller refuses the chart's args %v: %v", known, err)
			}
			for name, want := range c.want {
				got, ok := given[name], true
				if f := flags.Lookup(name); f != nil {
					got = f.Value.String()
				} else if _, ok = given[name]; !ok {
					got = "(not given)"
				}
				if got != want {
					t.Errorf("--%s = %s; want %s", name, got, want)
				}
			}
			if _, err := spiffeid.TrustDomainFromString(given["trust-domain"]); err != nil {
				t.Errorf("--trust-domain: %v", err)
			}
			if _, err := authz.ParseDefaultMode(given["default-policy"]); err != nil {
				t.Errorf("--default-policy: %v", err)
			}
		})
	}
}

// TestNotes: NOTES.txt says what to do next, and its example policy is one
// the mesh accepts.
func TestNotes(t *testing.T) {
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			notes := mustRender(t, c.file).notes
			for _, want := range []string{
				"kubectl label namespace <namespace> mesh.dev/inject=enabled",
				"meshctl check",
				"meshctl identity show",
				"kubectl -n mesh-system rollout status deployment/mesh-controller",
			} {
				if !strings.Contains(notes, want) {
					t.Errorf("NOTES.txt lacks %q", want)
				}
			}
			_, rest, ok := strings.Cut(notes, "<<'POLICY'\n")
			policyText, _, ok2 := strings.Cut(rest, "\n     POLICY")
			if !ok || !ok2 {
				t.Fatalf("NOTES.txt has no example policy:\n%s", notes)
			}
			var lines []string
			for l := range strings.SplitSeq(policyText, "\n") {
				lines = append(lines, strings.TrimPrefix(l, "     "))
			}
			text := strings.ReplaceAll(strings.Join(lines, "\n"), "<namespace>", "shop")
			var p v1alpha1.AuthorizationPolicy
			if err := yaml.UnmarshalStrict([]byte(text), &p); err != nil {
				t.Fatalf("the example policy does not decode: %v\n%s", err, text)
			}
			if errs := authz.Validate(&p); len(errs) != 0 {
				t.Errorf("the example policy is invalid: %v", errs.ToAggregate())
			}
			if p.Spec.Action != v1alpha1.Allow || len(p.Spec.Rules) == 0 || !strings.Contains(text, "spiffe://") {
				t.Errorf("the example policy %+v: want an ALLOW with rules naming an identity", p.Spec)
			}
		})
	}
}
