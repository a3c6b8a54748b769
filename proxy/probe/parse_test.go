package probe_test

import (
	"bytes"
	"encoding/json"
	"net/netip"
	"reflect"
	"strings"
	"testing"

	"github.com/mesh-dev/mesh/internal/intorstr"
	"github.com/mesh-dev/mesh/proxy/probe"
)

func TestParse(t *testing.T) {
	svc := "db"
	tests := []struct {
		name string
		in   string
		want probe.Probers
	}{
		{
			name: "istio's format, every handler",
			in: `{
			  "/app-health/web/livez": {"httpGet": {"path": "/healthz?full=1", "port": 8080, "scheme": "HTTPS",
			     "httpHeaders": [{"name": "X-Probe", "value": "1"}]}, "timeoutSeconds": 3},
			  "/app-health/web/readyz": {"tcpSocket": {"port": 8081}},
			  "/app-health/db-2/startupz": {"grpc": {"port": 9090, "service": "db"}}
			}`,
			want: probe.Probers{
				"/app-health/web/livez": {HTTPGet: &probe.HTTPGetAction{
					Path: "/healthz?full=1", Port: intorstr.FromInt32(8080), Scheme: probe.URISchemeHTTPS,
					HTTPHeaders: []probe.HTTPHeader{{Name: "X-Probe", Value: "1"}},
				}, TimeoutSeconds: 3},
				"/app-health/web/readyz":    {TCPSocket: &probe.TCPSocketAction{Port: intorstr.FromInt32(8081)}},
				"/app-health/db-2/startupz": {GRPC: &probe.GRPCAction{Port: 9090, Service: &svc}},
			},
		},
		{name: "empty map", in: ` {} `, want: probe.Probers{}},
		{
			name: "63-character container name, ports at the limits",
			in: `{"/app-health/` + strings.Repeat("a", 63) + `/livez": {"httpGet": {"path": "/", "port": 65535}},
			      "/app-health/b/livez": {"tcpSocket": {"port": 1}}}`,
			want: probe.Probers{
				"/app-health/" + strings.Repeat("a", 63) + "/livez": {HTTPGet: &probe.HTTPGetAction{Path: "/", Port: intorstr.FromInt32(65535)}},
				"/app-health/b/livez":                               {TCPSocket: &probe.TCPSocketAction{Port: intorstr.FromInt32(1)}},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := probe.Parse([]byte(tt.in))
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Fatalf("Parse:\n got %s\nwant %s", mustJSON(t, got), mustJSON(t, tt.want))
			}
			if _, err := probe.New(probe.Config{Probers: got, Target: netip.MustParseAddr("198.18.0.1")}); err != nil {
				t.Fatalf("New refused what Parse accepted: %v", err)
			}
		})
	}
}

func TestParseRejects(t *testing.T) {
	const p = `/app-health/web/readyz`
	entry := func(body string) string { return `{"` + p + `": ` + body + `}` }
	tests := []struct {
		name, in, err string
	}{
		{"empty", ``, `probe: app probes must be a JSON object keyed by path`},
		{"null", `null`, `probe: app probes must be a JSON object keyed by path`},
		{"array", `[]`, `probe: app probes must be a JSON object keyed by path`},
		{"truncated", `{"` + p + `": {"tcpSocket": {"port": 1}}`, `probe: app probes are not valid JSON: unexpected end of JSON input`},
		{"trailing data", `{} {}`, `probe: app probes are not valid JSON: invalid character '{' after top-level value`},
		{"too big", `{"x": "` + strings.Repeat("a", probe.MaxInput) + `"}`, `probe: app probes are 262153 bytes, more than the limit of 262144`},
		{"duplicate path", `{"` + p + `": {"tcpSocket": {"port": 1}}, "` + p + `": {"tcpSocket": {"port": 2}}}`,
			`probe: app probes: duplicate field "` + p + `"`},
		{"unknown field", entry(`{"tcpSocket": {"port": 1}, "periodSeconds": 5}`), `probe: entry "` + p + `": unknown field "periodSeconds"`},
		{"unknown nested field", entry(`{"httpGet": {"path": "/", "port": 1, "method": "POST"}}`), `probe: entry "` + p + `": unknown field "httpGet.method"`},
		{"field names are case-sensitive", entry(`{"HTTPGET": {"path": "/", "port": 1}}`), `probe: entry "` + p + `": unknown field "HTTPGET"`},
		{"unknown HTTP protocol", entry(`{"httpGet": {"path": "/", "port": 1, "protocol": "HTTP3"}}`), `probe: entry "` + p + `": httpGet.protocol "HTTP3" must be HTTP1 or HTTP2`},
		{"HTTP2 over HTTPS", entry(`{"httpGet": {"path": "/", "port": 1, "scheme": "HTTPS", "protocol": "HTTP2"}}`), `probe: entry "` + p + `": httpGet.protocol HTTP2 is cleartext HTTP/2 (h2c) and needs scheme HTTP, not HTTPS`},
		{"unknown gRPC mode", entry(`{"grpc": {"port": 1, "mode": "mTLS"}}`), `probe: entry "` + p + `": grpc.mode "mTLS" must be Plaintext or TLS`},
		{"exec is not a network probe", entry(`{"exec": {"command": ["true"]}}`), `probe: entry "` + p + `": unknown field "exec"`},
		{"duplicate handler field", entry(`{"tcpSocket": {"port": 1}, "tcpSocket": {"port": 2}}`), `probe: entry "` + p + `": duplicate field "tcpSocket"`},
		{"duplicate handler field spelled with an escape", entry(`{"tcpSocket": {"port": 1}, "tcp\u0053ocket": {"port": 2}}`), `probe: entry "` + p + `": duplicate field "tcpSocket"`},
		{"duplicate path spelled with an escape", `{"` + p + `": {"tcpSocket": {"port": 1}}, "\u002fapp-health/web/readyz": {"tcpSocket": {"port": 2}}}`,
			`probe: app probes: duplicate field "` + p + `"`},
		{"nested field in another case", entry(`{"tcpSocket": {"port": 1, "Port": 2}}`), `probe: entry "` + p + `": unknown field "tcpSocket.Port"`},
		{"entry not an object", entry(`"tcp:80"`), `probe: entry "` + p + `": json: cannot unmarshal string into Go value of type probe.Prober`},
		{"no handler", entry(`{"timeoutSeconds": 1}`), `probe: entry "` + p + `": exactly one of httpGet, tcpSocket, grpc must be set, found 0 []`},
		{"null entry", entry(`null`), `probe: entry "` + p + `": exactly one of httpGet, tcpSocket, grpc must be set, found 0 []`},
		{"two handlers", entry(`{"httpGet": {"path": "/", "port": 1}, "grpc": {"port": 2}}`),
			`probe: entry "` + p + `": exactly one of httpGet, tcpSocket, grpc must be set, found 2 [httpGet grpc]`},
		{"path outside app-health", `{"/admin/web/readyz": {"tcpSocket": {"port": 1}}}`,
			`probe: entry "/admin/web/readyz": path must be /app-health/<container>/<livez|readyz|startupz>`},
		{"unknown probe kind", `{"/app-health/web/healthz": {"tcpSocket": {"port": 1}}}`,
			`probe: entry "/app-health/web/healthz": path must be /app-health/<container>/<livez|readyz|startupz>`},
		{"dot segment", `{"/app-health/../readyz": {"tcpSocket": {"port": 1}}}`,
			`probe: entry "/app-health/../readyz": path must be /app-health/<container>/<livez|readyz|startupz>`},
		{"upper-case container", `{"/app-health/Web/readyz": {"tcpSocket": {"port": 1}}}`,
			`probe: entry "/app-health/Web/readyz": path must be /app-health/<container>/<livez|readyz|startupz>`},
		{"trailing dash", `{"/app-health/web-/readyz": {"tcpSocket": {"port": 1}}}`,
			`probe: entry "/app-health/web-/readyz": path must be /app-health/<container>/<livez|readyz|startupz>`},
		{"trailing newline in path", `{"/app-health/web/readyz\n": {"tcpSocket": {"port": 1}}}`,
			`probe: entry "/app-health/web/readyz\n": path must be /app-health/<container>/<livez|readyz|startupz>`},
		{"query in path", `{"/app-health/web/readyz?x=1": {"tcpSocket": {"port": 1}}}`,
			`probe: entry "/app-health/web/readyz?x=1": path must be /app-health/<container>/<livez|readyz|startupz>`},
		{"container name too long", `{"/app-health/` + strings.Repeat("a", 64) + `/livez": {"tcpSocket": {"port": 1}}}`,
			`probe: entry "/app-health/` + strings.Repeat("a", 64) + `/livez": container name is 64 characters, more than 63`},
		{"named http port", entry(`{"httpGet": {"path": "/", "port": "http"}}`),
			`probe: entry "` + p + `": httpGet.port "http" is a string: named ports must be resolved to numbers by the injector`},
		{"numeric string port", entry(`{"httpGet": {"path": "/", "port": "8080"}}`),
			`probe: entry "` + p + `": httpGet.port "8080" is a string: named ports must be resolved to numbers by the injector`},
		{"named tcp port", entry(`{"tcpSocket": {"port": "db"}}`),
			`probe: entry "` + p + `": tcpSocket.port "db" is a string: named ports must be resolved to numbers by the injector`},
		{"missing port", entry(`{"httpGet": {"path": "/"}}`), `probe: entry "` + p + `": httpGet.port 0 is out of range 1-65535`},
		{"port too big", entry(`{"httpGet": {"path": "/", "port": 65536}}`), `probe: entry "` + p + `": httpGet.port 65536 is out of range 1-65535`},
		{"negative tcp port", entry(`{"tcpSocket": {"port": -1}}`), `probe: entry "` + p + `": tcpSocket.port -1 is out of range 1-65535`},
		{"grpc port zero", entry(`{"grpc": {"port": 0}}`), `probe: entry "` + p + `": grpc.port 0 is out of range 1-65535`},
		{"grpc port too big", entry(`{"grpc": {"port": 70000}}`), `probe: entry "` + p + `": grpc.port 70000 is out of range 1-65535`},
		{"port overflows int32", entry(`{"grpc": {"port": 4294967297}}`),
			`probe: entry "` + p + `": json: cannot unmarshal number 4294967297 into Go struct field GRPCAction.grpc.port of type int32`},
		{"fractional port", entry(`{"tcpSocket": {"port": 80.5}}`),
			`probe: entry "` + p + `": json: cannot unmarshal number 80.5 into Go struct field TCPSocketAction.tcpSocket.port of type int32`},
		{"http host", entry(`{"httpGet": {"path": "/", "port": 1, "host": "198.18.0.9"}}`),
			`probe: entry "` + p + `": httpGet.host "198.18.0.9" must be empty: probes always reach the pod's own IP`},
		{"tcp host", entry(`{"tcpSocket": {"port": 1, "host": "metadata.google.internal"}}`),
			`probe: entry "` + p + `": tcpSocket.host "metadata.google.internal" must be empty: probes always reach the pod's own IP`},
		{"relative path", entry(`{"httpGet": {"path": "healthz", "port": 1}}`), `probe: entry "` + p + `": httpGet.path "healthz" must start with "/"`},
		{"empty path", entry(`{"httpGet": {"port": 1}}`), `probe: entry "` + p + `": httpGet.path "" must start with "/"`},
		{"network-path reference", entry(`{"httpGet": {"path": "//198.18.0.9/admin", "port": 1}}`),
			`probe: entry "` + p + `": httpGet.path "//198.18.0.9/admin" must be a path, not a URL with a host`},
		{"control character in path", entry(`{"httpGet": {"path": "/a\r\nX: 1", "port": 1}}`),
			`probe: entry "` + p + `": httpGet.path "/a\r\nX: 1" is not a valid URL path: parse "/a\r\nX: 1": net/url: invalid control character in URL`},
		{"bad scheme", entry(`{"httpGet": {"path": "/", "port": 1, "scheme": "ftp"}}`), `probe: entry "` + p + `": httpGet.scheme "ftp" must be HTTP or HTTPS`},
		{"lower-case scheme", entry(`{"httpGet": {"path": "/", "port": 1, "scheme": "https"}}`), `probe: entry "` + p + `": httpGet.scheme "https" must be HTTP or HTTPS`},
		{"header name with space", entry(`{"httpGet": {"path": "/", "port": 1, "httpHeaders": [{"name": "X A", "value": "1"}]}}`),
			`probe: entry "` + p + `": httpGet.httpHeaders[0].name "X A" is not a valid header name`},
		{"header name with underscore", entry(`{"httpGet": {"path": "/", "port": 1, "httpHeaders": [{"name": "X-Ok", "value": ""}, {"name": "X_Mesh_Peer_Identity", "value": "spiffe://x"}]}}`),
			`probe: entry "` + p + `": httpGet.httpHeaders[1].name "X_Mesh_Peer_Identity" is not a valid header name`},
		{"empty header name", entry(`{"httpGet": {"path": "/", "port": 1, "httpHeaders": [{"name": "", "value": "1"}]}}`),
			`probe: entry "` + p + `": httpGet.httpHeaders[0].name "" is not a valid header name`},
		{"header value smuggles a request", entry(`{"httpGet": {"path": "/", "port": 1, "httpHeaders": [{"name": "X", "value": "1\r\n\r\nDELETE /admin HTTP/1.1"}]}}`),
			`probe: entry "` + p + `": httpGet.httpHeaders[0] (X) has a value with control characters`},
		{"negative timeout", entry(`{"tcpSocket": {"port": 1}, "timeoutSeconds": -1}`), `probe: entry "` + p + `": timeoutSeconds -1 is negative`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := probe.Parse([]byte(tt.in))
			if err == nil {
				t.Fatalf("Parse accepted it: %s", mustJSON(t, got))
			}
			if err.Error() != tt.err {
				t.Fatalf("Parse error:\n got %q\nwant %q", err, tt.err)
			}
			if got != nil {
				t.Fatalf("Parse returned probers with its error: %v", got)
			}
		})
	}
}

// FuzzParse: Parse never panics, what it accepts New accepts, and what it
// accepts survives a round trip through JSON unchanged.
func FuzzParse(f *testing.F) {
	for _, s := range []string{
		`{"/app-health/web/livez": {"httpGet": {"path": "/healthz", "port": 8080, "scheme": "HTTPS", "httpHeaders": [{"name": "Host", "value": "web"}]}, "timeoutSeconds": 3}}`,
		`{"/app-health/web/readyz": {"tcpSocket": {"port": 8081}}}`,
		`{"/app-health/db/startupz": {"grpc": {"port": 9090, "service": "db"}}}`,
		`{"/app-health/web/readyz": {"httpGet": {"path": "/", "port": "http"}}}`,
		`{"/app-health/web/readyz": {"httpGet": {"path": "//h/x", "port": 1, "host": "h"}}}`,
		`{"/app-health/web/readyz": {"tcpSocket": {"port": 1}}, "/app-health/web/readyz": {}}`,
		`{"/app-health/web/readyz": {"grpc": {"port": 1, "service": null}, "httpGet": null}}`,
		`{}`, `null`, `[]`, `{"a":`, "",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		p, err := probe.Parse(b)
		if err != nil {
			if p != nil {
				t.Fatalf("probers with an error: %v", p)
			}
			if !strings.HasPrefix(err.Error(), "probe: ") {
				t.Fatalf("error without the package prefix: %v", err)
			}
			return
		}
		if _, err := probe.New(probe.Config{Probers: p, Target: netip.MustParseAddr("198.18.0.1")}); err != nil {
			t.Fatalf("New refused what Parse accepted: %v", err)
		}
		once, err := json.Marshal(p)
		if err != nil {
			t.Fatalf("marshal: %v", err)
		}
		again, err := probe.Parse(once)
		if err != nil {
			t.Fatalf("Parse refused its own output %s: %v", once, err)
		}
		twice, err := json.Marshal(again)
		if err != nil {
			t.Fatalf("marshal: %v", err)
		}
		if !bytes.Equal(once, twice) {
			t.Fatalf("round trip changed the probers:\n%s\n%s", once, twice)
		}
	})
}

func mustJSON(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
