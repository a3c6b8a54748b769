package charts

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"

	"github.com/mesh-dev/mesh/authz"
	"github.com/mesh-dev/mesh/authz/api/v1alpha1"
	"github.com/mesh-dev/mesh/authz/validation"
	"github.com/mesh-dev/mesh/inject"
	"github.com/mesh-dev/mesh/meshcontroller"
)

// TestInjectorConfig: the ConfigMap the controller reads is accepted by
// the injector's own parser and checks (inject.ParseConfig, inject.New),
// carries every proxy value, and sets every field itself, so values.yaml,
// not the injector's defaults, is the whole truth.
func TestInjectorConfig(t *testing.T) {
	for _, c := range []struct {
		name, file string
		td, image  string
		want       func(inject.Config) []string // what is wrong with the config
	}{
		{"default", "", "cluster.local", "ghcr.io/mesh-dev/mesh-proxy:0.1.0", func(g inject.Config) []string {
			return compare(
				check{"proxyUID", g.ProxyUID, int64(1337)},
				check{"identityAddr", g.IdentityAddr, "mesh-controller.mesh-system.svc:15012"},
				check{"tokenAudience", g.TokenAudience, "identity.mesh.dev"},
				check{"inboundMode", string(g.InboundMode), "strict"},
				check{"outboundMode", string(g.OutboundMode), "permissive"},
				check{"adminPort", g.AdminPort, int32(15020)},
				check{"pathNormalization", g.PathNormalization, "MERGE_SLASHES"},
				check{"audit.enabled", *g.Audit.Enabled, true},
				check{"audit.checkpointInterval", g.Audit.CheckpointInterval.Duration, 10 * time.Second},
				check{"excludeInboundPorts", len(g.ExcludeInboundPorts), 0},
				check{"resources.limits.memory", g.Resources.Limits.Memory().String(), "256Mi"},
			)
		}},
		{"full", fullValues, "prod.example.com", "registry.example.com/mesh/mesh-proxy:v0.1.0-rc.2", func(g inject.Config) []string {
			return compare(
				check{"proxyImagePullPolicy", g.ProxyImagePullPolicy, corev1.PullAlways},
				check{"proxyUID", g.ProxyUID, int64(2102)},
				check{"inboundMode", string(g.InboundMode), "permissive"},
				check{"outboundMode", string(g.OutboundMode), "strict"},
				check{"adminPort", g.AdminPort, int32(15120)},
				check{"logLevel", g.LogLevel, "debug"},
				check{"logFormat", g.LogFormat, "text"},
				check{"pathNormalization", g.PathNormalization, "DECODE_AND_MERGE_SLASHES"},
				check{"audit.enabled", *g.Audit.Enabled, false},
				check{"audit.checkpointInterval", g.Audit.CheckpointInterval.Duration, 90 * time.Second},
				check{"excludeInboundPorts", fmt.Sprint(g.ExcludeInboundPorts), "[3306 5432]"},
				check{"excludeOutboundPorts", fmt.Sprint(g.ExcludeOutboundPorts), "[6379]"},
				check{"resources.requests.cpu", g.Resources.Requests.Cpu().String(), "20m"},
				check{"resources.limits.cpu", g.Resources.Limits.Cpu().String(), "500m"},
			)
		}},
	} {
		t.Run(c.name, func(t *testing.T) {
			o := decode(t, mustRender(t, c.file))
			cm := o.configMaps[0]
			if cm.Name != "mesh-injector" || len(cm.Data) != 1 {
				t.Fatalf("ConfigMap %s with keys %d; want mesh-injector with config.yaml only", cm.Name, len(cm.Data))
			}
			parsed, err := inject.ParseConfig([]byte(cm.Data["config.yaml"]))
			if err != nil {
				t.Fatalf("the injector refuses config.yaml: %v\n%s", err, cm.Data["config.yaml"])
			}
			td := spiffeid.RequireTrustDomainFromString(c.td)
			in, err := inject.New(parsed, inject.Mesh{
				TrustDomain: td, ControllerID: spiffeid.RequireFromPath(td, "/ns/mesh-system/sa/mesh-controller"),
				Namespace: releaseNS, Version: "0.1.0",
			})
			if err != nil {
				t.Fatalf("the injector refuses config.yaml: %v\n%s", err, cm.Data["config.yaml"])
			}
			final := in.Config()
			pb, _ := yaml.Marshal(parsed)
			fb, _ := yaml.Marshal(final)
			if string(pb) != string(fb) {
				t.Errorf("the injector filled in defaults the chart left out:\nchart:\n%s\nin force:\n%s", pb, fb)
			}
			problems := append(c.want(final), compare(check{"proxyImage", final.ProxyImage, c.image})...)
			for _, p := range problems {
				t.Error(p)
			}
		})
	}
}

type check struct {
	name      string
	got, want any
}

func compare(checks ...check) []string {
	var out []string
	for _, c := range checks {
		if c.got != c.want {
			out = append(out, fmt.Sprintf("%s = %v; want %v", c.name, c.got, c.want))
		}
	}
	return out
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
					t.Errorf("--%s is not a mesh-controller flag", name)
					continue
				}
				known = append(known, a)
			}
			if err := flags.Parse(known); err != nil {
				t.Fatalf("mesh-controller refuses the chart's args %v: %v", known, err)
			}
			for name, want := range c.want {
				got := "(not a flag)"
				if f := flags.Lookup(name); f != nil {
					got = f.Value.String()
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
			if errs := validation.Validate(&p); len(errs) != 0 {
				t.Errorf("the example policy is invalid: %v", errs.ToAggregate())
			}
			if p.Spec.Action != v1alpha1.Allow || len(p.Spec.Rules) == 0 || !strings.Contains(text, "spiffe://") {
				t.Errorf("the example policy %+v: want an ALLOW with rules naming an identity", p.Spec)
			}
		})
	}
}

// TestAppVersionIsControllerVersion: the chart's appVersion (the images'
// default tag) is the controller's Version (the proxy image tag it
// defaults to, and the mesh.dev/injected stamp), so bump them together.
func TestAppVersionIsControllerVersion(t *testing.T) {
	if v := loadChart(t).Metadata.AppVersion; v != meshcontroller.Version {
		t.Errorf("Chart.yaml appVersion %s, meshcontroller.Version %s", v, meshcontroller.Version)
	}
}
