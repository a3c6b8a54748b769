package charts

import (
	"bytes"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"helm.sh/helm/v3/pkg/chart"
	"helm.sh/helm/v3/pkg/chartutil"
	"helm.sh/helm/v3/pkg/lint"
	"helm.sh/helm/v3/pkg/lint/support"
	"helm.sh/helm/v3/pkg/releaseutil"

	"github.com/mesh-dev/mesh/internal/chartrender"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

const (
	chartDir    = "mesh"
	releaseName = "mesh"
	releaseNS   = "mesh-system"
	fullValues  = "testdata/full-values.yaml"
)

// loadChart loads charts/mesh as helm install does.
func loadChart(t *testing.T) *chart.Chart {
	t.Helper()
	ch, err := chartrender.Load(chartDir)
	if err != nil {
		t.Fatal(err)
	}
	return ch
}

// userValues is chartrender.Values, failing t.
func userValues(t *testing.T, file string, sets []string) map[string]any {
	t.Helper()
	vals, err := chartrender.Values(file, sets)
	if err != nil {
		t.Fatal(err)
	}
	return vals
}

// rendered is one `helm template` run.
type rendered struct {
	// manifests in Helm's install order, as `helm template` prints them.
	manifests []releaseutil.Manifest
	notes     string
}

// render is `helm template mesh charts/mesh -n mesh-system` with the given
// user values, schema validation included: its error is what helm install
// would print.
func render(ch *chart.Chart, vals map[string]any) (*rendered, error) {
	r, err := chartrender.Render(ch, releaseName, releaseNS, vals)
	if err != nil {
		return nil, err
	}
	return &rendered{manifests: r.Manifests, notes: r.Notes}, nil
}

func mustRender(t *testing.T, file string, sets ...string) *rendered {
	t.Helper()
	r, err := render(loadChart(t), userValues(t, file, sets))
	if err != nil {
		t.Fatalf("rendering with %q %q: %v", file, sets, err)
	}
	return r
}

// template is the text `helm template` prints.
func (r *rendered) template() string {
	var b strings.Builder
	for _, m := range r.manifests {
		fmt.Fprintf(&b, "---\n# Source: %s\n%s\n", m.Name, m.Content)
	}
	return b.String()
}

// golden compares got with testdata/name, or rewrites it with -update.
func golden(t *testing.T, name, got string) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test ./charts/ -update to create it)", err)
	}
	if got != string(want) {
		t.Errorf("%s differs from the rendered chart (run go test ./charts/ -update after an intended change):\n%s", path, firstDiff(string(want), got))
	}
}

// firstDiff shows the first differing line with a little context.
func firstDiff(want, got string) string {
	wl, gl := strings.Split(want, "\n"), strings.Split(got, "\n")
	for i := 0; i < len(wl) || i < len(gl); i++ {
		var w, g string
		if i < len(wl) {
			w = wl[i]
		}
		if i < len(gl) {
			g = gl[i]
		}
		if w != g {
			return fmt.Sprintf("line %d:\n  want: %q\n  got:  %q", i+1, w, g)
		}
	}
	return "(no line differs)"
}

var cases = []struct {
	name, file string
}{
	{"default", ""},
	{"full", fullValues},
}

func TestGolden(t *testing.T) {
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := mustRender(t, c.file)
			golden(t, c.name+".golden.yaml", r.template())
			golden(t, c.name+".NOTES.golden.txt", r.notes)
		})
	}
}

func TestLint(t *testing.T) {
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var vals map[string]any
			if c.file != "" {
				vals = userValues(t, c.file, nil)
			}
			linter := lint.All(chartDir, vals, releaseNS, false)
			for _, m := range linter.Messages {
				// The one message allowed: Helm recommends an icon, and
				// mesh has none to point at.
				if m.Severity == support.InfoSev && strings.Contains(m.Err.Error(), "icon is recommended") {
					continue
				}
				t.Errorf("helm lint: %s", m)
			}
		})
	}
}

// TestSchemaRefuses: bad values fail at install with the schema's own
// message, naming the value and what was wrong.
func TestSchemaRefuses(t *testing.T) {
	for _, c := range []struct {
		set  []string
		want string
	}{
		{[]string{"identity.svidTTL=banana"}, `at '/identity/svidTTL': 'banana' does not match pattern`},
		{[]string{"trustDomain=123"}, `at '/trustDomain': got number, want string`},
		{[]string{"trustDomain=Example.ORG"}, `at '/trustDomain': 'Example.ORG' does not match pattern`},
		{[]string{"trustDomain=evil.org/ns/x"}, `at '/trustDomain': 'evil.org/ns/x' does not match pattern`},
		{[]string{"trustDomain="}, `at '/trustDomain'`},
		{[]string{"identity.maxSVIDTTL=24"}, `at '/identity/maxSVIDTTL': got number, want string`},
		{[]string{"identity.svidTTL=1d"}, `at '/identity/svidTTL': '1d' does not match pattern`},
		{[]string{"identity.svidTTL=-1h"}, `at '/identity/svidTTL': '-1h' does not match pattern`},
		{[]string{"defaultPolicy=open"}, `at '/defaultPolicy': value must be one of 'deny', 'allow-mesh', 'allow-same-namespace', 'allow-all'`},
		{[]string{"ca.source=vault"}, `at '/ca/source': value must be one of 'selfSigned', 'existingSecret'`},
		{[]string{"ca.source=existingSecret"}, `at '/ca/existingSecret': minLength: got 0, want 1`},
		{[]string{"ca.existingSecret=../../etc"}, `at '/ca/existingSecret': '../../etc' does not match pattern`},
		{[]string{"controller.replicas=0"}, `at '/controller/replicas': minimum: got 0, want 1`},
		{[]string{"controller.replicas=two"}, `at '/controller/replicas': got string, want integer`},
		{[]string{"controllr.replicas=2"}, `additional properties 'controllr' not allowed`},
		{[]string{"controller.imag.tag=x"}, `at '/controller': additional properties 'imag' not allowed`},
		{[]string{"controller.image.tag=latest; rm -rf /"}, `at '/controller/image/tag'`},
		{[]string{"controller.image.pullPolicy=Sometimes"}, `at '/controller/image/pullPolicy': value must be one of 'Always', 'IfNotPresent', 'Never'`},
		{[]string{"controller.resources.limits.memory=lots"}, `at '/controller/resources/limits/memory'`},
		{[]string{"controller.leaderElection.leaseDuration=forever"}, `at '/controller/leaderElection/leaseDuration': 'forever' does not match pattern`},
		{[]string{"proxy.uid=0"}, `at '/proxy/uid': minimum: got 0, want 1`},
		{[]string{"proxy.inboundMode=lax"}, `at '/proxy/inboundMode': value must be one of 'strict', 'permissive'`},
		{[]string{"proxy.outboundMode=STRICT"}, `at '/proxy/outboundMode': value must be one of 'strict', 'permissive'`},
		{[]string{"proxy.ports.admin=70000"}, `at '/proxy/ports/admin': maximum: got 70,000, want 65,535`},
		{[]string{"proxy.ports.inbound=15106"}, `at '/proxy/ports/inbound': value must be 15006`},
		{[]string{"proxy.excludeInboundPorts={0}"}, `at '/proxy/excludeInboundPorts/0'`},
		{[]string{"proxy.excludeOutboundPorts={http}"}, `at '/proxy/excludeOutboundPorts/0'`},
		{[]string{"proxy.pathNormalization=merge_slashes"}, `at '/proxy/pathNormalization': value must be one of 'NONE', 'BASE', 'MERGE_SLASHES', 'DECODE_AND_MERGE_SLASHES'`},
		{[]string{"proxy.logLevel=trace"}, `at '/proxy/logLevel': value must be one of 'debug', 'info', 'warn', 'error'`},
		{[]string{"proxy.audit.enabled=maybe"}, `at '/proxy/audit/enabled': got string, want boolean`},
		{[]string{"proxy.audit.checkpointInterval=10"}, `at '/proxy/audit/checkpointInterval': got number, want string`},
		{[]string{"injector.failurePolicy=Sometimes"}, `at '/injector/failurePolicy': value must be one of 'Ignore', 'Fail'`},
		{[]string{"injector.excludeNamespaces={Kube_System}"}, `at '/injector/excludeNamespaces/0': 'Kube_System' does not match pattern`},
		{[]string{"policyValidation.failurePolicy=ignore"}, `at '/policyValidation/failurePolicy': value must be one of 'Ignore', 'Fail'`},
	} {
		t.Run(strings.Join(c.set, ","), func(t *testing.T) {
			_, err := render(loadChart(t), userValues(t, "", c.set))
			if err == nil {
				t.Fatalf("--set %s rendered; want the schema to refuse it", c.set)
			}
			msg := err.Error()
			if !strings.Contains(msg, "values don't meet the specifications of the schema") || !strings.Contains(msg, c.want) {
				t.Errorf("--set %s: error\n%s\nwant the schema's message containing %q", c.set, msg, c.want)
			}
		})
	}
}

// TestSchemaAccepts: what the schema must let through, and where it lands.
func TestSchemaAccepts(t *testing.T) {
	for _, c := range []struct {
		set  []string
		want []string // lines (trimmed) the output must contain
	}{
		// global is a parent chart's, never checked.
		{[]string{"global.imageRegistry=x", "global.anything.nested=1"}, nil},
		// --set gives integers for ports; the injector config wants strings.
		{[]string{"proxy.excludeInboundPorts={8080,9090}"}, []string{`- "8080"`, `- "9090"`}},
		{[]string{"identity.svidTTL=1h30m", "identity.maxSVIDTTL=36h"}, []string{"- --svid-ttl=1h30m", "- --max-svid-ttl=36h"}},
		{[]string{"ca.source=existingSecret", "ca.existingSecret=my-ca"}, []string{"- --existing-secret", "- --ca-secret=my-ca"}},
		{[]string{"controller.image.tag=v9"}, []string{`image: "ghcr.io/mesh-dev/mesh-controller:v9"`}},
		{[]string{"proxy.image.tag=v8"}, []string{`proxyImage: "ghcr.io/mesh-dev/mesh-proxy:v8"`}},
		{[]string{"controller.resources.requests.cpu=0.5"}, []string{`cpu: "0.5"`}},
	} {
		t.Run(strings.Join(c.set, ","), func(t *testing.T) {
			out := mustRender(t, "", c.set...).template()
			lines := map[string]bool{}
			for l := range strings.SplitSeq(out, "\n") {
				lines[strings.TrimSpace(l)] = true
			}
			for _, w := range c.want {
				if !lines[w] {
					t.Errorf("--set %s: no line %q in the output", c.set, w)
				}
			}
		})
	}
}

// TestDefaultImagesFollowAppVersion: an empty tag means the chart's
// appVersion, for both images.
func TestDefaultImagesFollowAppVersion(t *testing.T) {
	ch := loadChart(t)
	r, err := render(ch, nil)
	if err != nil {
		t.Fatal(err)
	}
	out := r.template()
	for _, want := range []string{
		`image: "ghcr.io/mesh-dev/mesh-controller:` + ch.Metadata.AppVersion + `"`,
		`proxyImage: "ghcr.io/mesh-dev/mesh-proxy:` + ch.Metadata.AppVersion + `"`,
	} {
		if !strings.Contains(out, want) {
			t.Errorf("default output lacks %s", want)
		}
	}
	if ch.Metadata.AppVersion != "0.1.0" || ch.Metadata.APIVersion != chart.APIVersionV2 {
		t.Errorf("Chart.yaml: apiVersion %s appVersion %s; want v2, 0.1.0", ch.Metadata.APIVersion, ch.Metadata.AppVersion)
	}
}

// TestValuesDocumented: every key in values.yaml has a comment above it,
// since values.yaml is the chart's reference.
func TestValuesDocumented(t *testing.T) {
	data, err := os.ReadFile(filepath.Join(chartDir, "values.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	key := regexp.MustCompile(`^(\s*)([A-Za-z][A-Za-z0-9]*):`)
	// Kubernetes objects passed through as they are: the key is
	// documented, its contents are Kubernetes'.
	passthrough := map[string]bool{"resources": true, "nodeSelector": true, "tolerations": true}
	inside := -1 // indentation of the passthrough key we are in, or -1
	lines := bytes.Split(data, []byte("\n"))
	for i, l := range lines {
		m := key.FindSubmatch(l)
		if m == nil {
			continue
		}
		indent := len(m[1])
		if inside >= 0 && indent > inside {
			continue
		}
		inside = -1
		name := string(m[2])
		value := strings.TrimSpace(string(l[len(m[0]):]))
		if passthrough[name] {
			inside = indent
		} else if value == "" {
			// A section: documented by its fields.
			continue
		}
		prev := ""
		if i > 0 {
			prev = strings.TrimSpace(string(lines[i-1]))
		}
		if !strings.HasPrefix(prev, "#") {
			t.Errorf("values.yaml:%d: %s has no comment above it", i+1, name)
		}
	}
}

// TestInstallDocCoversValues: docs/install.md's values table names every
// value in values.yaml, and no value that is not there.
func TestInstallDocCoversValues(t *testing.T) {
	vals, err := chartutil.ReadValuesFile(filepath.Join(chartDir, "values.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]bool{}
	var walk func(prefix string, m map[string]any)
	walk = func(prefix string, m map[string]any) {
		for k, v := range m {
			path := prefix + k
			// Kubernetes objects and global are documented as one value.
			if sub, ok := v.(map[string]any); ok && len(sub) > 0 && k != "resources" && k != "nodeSelector" {
				walk(path+".", sub)
				continue
			}
			want[path] = true
		}
	}
	walk("", vals.AsMap())
	doc, err := os.ReadFile("../docs/install.md")
	if err != nil {
		t.Fatal(err)
	}
	row := regexp.MustCompile("(?m)^\\| `([A-Za-z0-9.]+)` \\|")
	got := map[string]bool{}
	for _, m := range row.FindAllStringSubmatch(string(doc), -1) {
		got[m[1]] = true
	}
	for k := range want {
		if !got[k] {
			t.Errorf("docs/install.md has no row for %s", k)
		}
	}
	for k := range got {
		if !want[k] {
			t.Errorf("docs/install.md has a row for %s, which values.yaml does not have", k)
		}
	}
	if len(want) < 30 {
		t.Errorf("only %d values found; the walk is broken", len(want))
	}
}
