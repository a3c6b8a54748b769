package inject_test

import (
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/mesh-dev/mesh/inject"
)

var update = flag.Bool("update", false, "rewrite testdata/default-config.json")

// TestDefaults pins the fully defaulted config (a missing file) in a
// golden file: a changed default shows up in review.
func TestDefaults(t *testing.T) {
	cfg, err := inject.LoadConfig(filepath.Join(t.TempDir(), "missing.yaml"))
	if err != nil {
		t.Fatalf("a missing file must mean defaults: %v", err)
	}
	got, err := json.MarshalIndent(newInjector(t, cfg).Config(), "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	golden := filepath.Join("testdata", "default-config.json")
	if *update {
		if err := os.WriteFile(golden, append(got, '\n'), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatal(err)
	}
	if strings.TrimSpace(string(want)) != string(got) {
		t.Errorf("defaults changed (go test -update to accept):\n%s", got)
	}
}

// TestFullConfig: every field of the file reaches the config in force.
func TestFullConfig(t *testing.T) {
	path := filepath.Join(t.TempDir(), "config.yaml")
	yaml := `
proxyImage: registry.example/mesh-proxy@sha256:abc
proxyImagePullPolicy: Always
proxyUID: 2102
identityAddr: mesh-controller.mesh.svc:15012
tokenAudience: identity.mesh.dev
inboundMode: permissive
outboundMode: strict
adminPort: 15021
inboundPort: 15006
outboundPort: 15001
logLevel: debug
logFormat: text
pathNormalization: DECODE_AND_MERGE_SLASHES
resources:
  requests: {cpu: 100m, memory: 64Mi}
  limits: {memory: 1Gi}
audit: {enabled: true, checkpointInterval: 5s}
excludeInboundPorts: [22, "9000"]
excludeOutboundPorts: ["5432"]
`
	if err := os.WriteFile(path, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := inject.LoadConfig(path)
	if err != nil {
		t.Fatal(err)
	}
	c := newInjector(t, cfg).Config()
	if c.ProxyImage != "registry.example/mesh-proxy@sha256:abc" || c.ProxyImagePullPolicy != "Always" || c.ProxyUID != 2102 ||
		c.IdentityAddr != "mesh-controller.mesh.svc:15012" || c.InboundMode != "permissive" || c.OutboundMode != "strict" ||
		c.AdminPort != 15021 || c.LogLevel != "debug" || c.LogFormat != "text" || c.PathNormalization != "DECODE_AND_MERGE_SLASHES" ||
		c.Resources.Limits.Memory().String() != "1Gi" || c.Audit.CheckpointInterval.Duration.String() != "5s" ||
		len(c.ExcludeInboundPorts) != 2 || c.ExcludeInboundPorts[1] != 9000 || c.ExcludeOutboundPorts[0] != 5432 {
		t.Errorf("config in force %+v", c)
	}
}

// TestBadConfig: each bad value is refused naming its field.
func TestBadConfig(t *testing.T) {
	tests := []struct{ yaml, want string }{
		{"proxyImag: x", `unknown field "proxyImag"`},
		{"proxyUID: 1\nproxyUID: 2", `key "proxyUID" already set`},
		{"proxyUID: -1", "proxyUID: -1 is not a non-root UID"},
		{"proxyUID: banana", "proxyUID"},
		{"proxyImage: 'a b'", `proxyImage: "a b" is not an image reference`},
		{"proxyImagePullPolicy: Sometimes", `proxyImagePullPolicy: "Sometimes" is not Always`},
		{"identityAddr: mesh-controller", `identityAddr: "mesh-controller" is not host:port`},
		{"identityAddr: 'a:1,b'", `identityAddr: "b" is not host:port`},
		{"identityAddr: 'a:99999'", `is not host:port`},
		{"tokenAudience: 'a b'", `tokenAudience: "a b" is not an audience`},
		{"inboundMode: STRICT", `inboundMode: "STRICT" is not strict or permissive`},
		{"outboundMode: disabled", `outboundMode: "disabled" is not strict or permissive`},
		{"adminPort: 70000", "adminPort: 70000 is not a port"},
		{"adminPort: 15006", "adminPort: 15006 is also the inbound or outbound port"},
		{"inboundPort: 15007", "mesh-proxy run listens on 15006 and 15001 only"},
		{"logLevel: verbose", `logLevel: "verbose" is not debug, info, warn or error`},
		{"logFormat: xml", `logFormat: "xml" is not json or text`},
		{"pathNormalization: SOME", `pathNormalization: normalize: path normalization mode "SOME"`},
		{"audit: {checkpointInterval: banana}", "banana"},
		{"audit: {checkpointInterval: -1s}", "audit.checkpointInterval: -1s is negative"},
		{"excludeInboundPorts: [0]", "0 is not a port"},
		{"excludeInboundPorts: [ssh]", "is not a port"},
		{"excludeOutboundPorts: 5432", "a list of ports"},
		{"resources: {requests: {cpu: lots}}", "quantities must match"},
		{"- a list", "inject: config"},
	}
	for _, tc := range tests {
		t.Run(tc.yaml, func(t *testing.T) {
			cfg, err := inject.ParseConfig([]byte(tc.yaml))
			if err == nil {
				_, err = inject.New(cfg, mesh)
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.HasPrefix(err.Error(), "inject: ") {
				t.Fatalf("error %v, want one containing %q", err, tc.want)
			}
		})
	}
	if _, err := inject.ParseConfig(make([]byte, 2<<20)); err == nil || !strings.Contains(err.Error(), "more than") {
		t.Errorf("a 2 MiB config: %v", err)
	}
	if _, err := inject.New(inject.Config{}, inject.Mesh{}); err == nil || !strings.Contains(err.Error(), "required") {
		t.Errorf("no Mesh: %v", err)
	}
	other := mesh
	other.ControllerID = spiffeid.RequireFromString("spiffe://evil.example/ns/mesh-system/sa/mesh-controller")
	if _, err := inject.New(inject.Config{}, other); err == nil || !strings.Contains(err.Error(), "is not in trust domain example.org") {
		t.Errorf("a controller of another trust domain: %v", err)
	}
	if _, err := inject.LoadConfig(t.TempDir()); err == nil || !strings.HasPrefix(err.Error(), "inject: config:") {
		t.Errorf("a directory as the config file: %v", err)
	}
}
