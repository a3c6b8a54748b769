package probe

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/url"
	"regexp"
	"slices"
	"strings"

	"golang.org/x/net/http/httpguts"

	"github.com/mesh-dev/mesh/internal/intorstr"
)

// Probers is the set of app probes the proxy performs, keyed by the path the
// kubelet asks for ("/app-health/web/readyz").
type Probers map[string]Prober

// Prober is one original probe of a container: exactly one of HTTPGet,
// TCPSocket and GRPC, plus its timeout. The handlers have the JSON of the
// Kubernetes types (see HTTPGetAction); the injector converts a container's
// ProbeHandler after resolving named ports to numbers.
type Prober struct {
	HTTPGet   *HTTPGetAction   `json:"httpGet,omitempty"`
	TCPSocket *TCPSocketAction `json:"tcpSocket,omitempty"`
	GRPC      *GRPCAction      `json:"grpc,omitempty"`
	// TimeoutSeconds bounds the whole probe, redirects included. Zero means
	// Config.DefaultTimeout.
	TimeoutSeconds int32 `json:"timeoutSeconds,omitempty"`
}

// MaxInput bounds what Parse reads. The map comes from one environment
// variable or flag; a pod has at most three probes per container.
const MaxInput = 256 << 10

// pathGrammar is the only shape of path the handler serves: the container
// name is a DNS-1123 label (length checked apart), the probe one of three.
var pathGrammar = regexp.MustCompile(`^/app-health/[a-z0-9]([-a-z0-9]*[a-z0-9])?/(livez|readyz|startupz)$`)

// headerName is what the Kubernetes API accepts for httpHeaders[].name.
var headerName = regexp.MustCompile(`^[-A-Za-z0-9]+$`)

// Parse reads the JSON map of app probes (the MESH_APP_PROBES environment
// variable or the --app-probes flag; the format of Istio's
// ISTIO_KUBE_APP_PROBERS). It is strict: field names are case-sensitive,
// unknown and duplicate fields are rejected, and every entry must pass the
// checks described on Prober's fields (see validate). An empty input is an
// error: callers with no probes configured should not call Parse.
func Parse(b []byte) (Probers, error) {
	if len(b) > MaxInput {
		return nil, fmt.Errorf("probe: app probes are %d bytes, more than the limit of %d", len(b), MaxInput)
	}
	trimmed := bytes.TrimSpace(b)
	if len(trimmed) == 0 || trimmed[0] != '{' {
		return nil, fmt.Errorf("probe: app probes must be a JSON object keyed by path")
	}
	// Decode the entries raw first, so each entry's errors can name it.
	var raw map[string]json.RawMessage
	strict, err := unmarshalStrict(trimmed, &raw)
	if err != nil {
		return nil, fmt.Errorf("probe: app probes are not valid JSON: %w", err)
	}
	if len(strict) > 0 {
		return nil, fmt.Errorf("probe: app probes: %w", strict[0])
	}
	keys := make([]string, 0, len(raw))
	for k := range raw {
		keys = append(keys, k)
	}
	slices.Sort(keys) // the first error reported does not depend on map order
	out := make(Probers, len(raw))
	for _, k := range keys {
		var p Prober
		strict, err := unmarshalStrict(raw[k], &p)
		if err != nil {
			return nil, fmt.Errorf("probe: entry %q: %w", k, err)
		}
		if len(strict) > 0 {
			return nil, fmt.Errorf("probe: entry %q: %w", k, strict[0])
		}
		if err := validate(k, p); err != nil {
			return nil, err
		}
		out[k] = p
	}
	return out, nil
}

// validate checks one entry. New calls it too, for Probers built by hand.
func validate(path string, p Prober) error {
	fail := func(format string, args ...any) error {
		return fmt.Errorf("probe: entry %q: "+format, append([]any{path}, args...)...)
	}
	if !pathGrammar.MatchString(path) {
		return fail("path must be /app-health/<container>/<livez|readyz|startupz>")
	}
	if name := strings.Split(path, "/")[2]; len(name) > 63 {
		return fail("container name is %d characters, more than 63", len(name))
	}
	var set []string
	if p.HTTPGet != nil {
		set = append(set, "httpGet")
	}
	if p.TCPSocket != nil {
		set = append(set, "tcpSocket")
	}
	if p.GRPC != nil {
		set = append(set, "grpc")
	}
	if len(set) != 1 {
		return fail("exactly one of httpGet, tcpSocket, grpc must be set, found %d %v", len(set), set)
	}
	if p.TimeoutSeconds < 0 {
		return fail("timeoutSeconds %d is negative", p.TimeoutSeconds)
	}
	switch {
	case p.HTTPGet != nil:
		return validateHTTP(fail, p.HTTPGet)
	case p.TCPSocket != nil:
		if p.TCPSocket.Host != "" {
			return fail("tcpSocket.host %q must be empty: probes always reach the pod's own IP", p.TCPSocket.Host)
		}
		return validatePort(fail, "tcpSocket.port", p.TCPSocket.Port)
	default:
		if m := p.GRPC.Mode; m != nil && *m != GRPCProbeModePlaintext && *m != GRPCProbeModeTLS {
			return fail("grpc.mode %q must be Plaintext or TLS", *m)
		}
		return validatePort(fail, "grpc.port", intorstr.FromInt32(p.GRPC.Port))
	}
}

func validateHTTP(fail func(string, ...any) error, h *HTTPGetAction) error {
	// The kubelet would send the probe to httpGet.host; the proxy never
	// does (Istio #31087): the target is the pod itself, and an entry that
	// says otherwise is a mistake of the injector.
	if h.Host != "" {
		return fail("httpGet.host %q must be empty: probes always reach the pod's own IP", h.Host)
	}
	if err := validatePort(fail, "httpGet.port", h.Port); err != nil {
		return err
	}
	switch h.Scheme {
	case "", URISchemeHTTP, URISchemeHTTPS:
	default:
		return fail("httpGet.scheme %q must be HTTP or HTTPS", h.Scheme)
	}
	if h.Protocol != nil {
		switch *h.Protocol {
		case HTTPProtocolHTTP1:
		case HTTPProtocolHTTP2:
			// Kubernetes supports cleartext HTTP/2 only (h2c).
			if h.Scheme == URISchemeHTTPS {
				return fail("httpGet.protocol HTTP2 is cleartext HTTP/2 (h2c) and needs scheme HTTP, not HTTPS")
			}
		default:
			return fail("httpGet.protocol %q must be HTTP1 or HTTP2", *h.Protocol)
		}
	}
	if !strings.HasPrefix(h.Path, "/") {
		return fail("httpGet.path %q must start with \"/\"", h.Path)
	}
	// "//host/x" parses as a host; the kubelet would then send "/x". Refuse
	// it rather than send something other than what is written.
	u, err := url.Parse(h.Path)
	if err != nil {
		return fail("httpGet.path %q is not a valid URL path: %w", h.Path, err)
	}
	if u.Host != "" || u.User != nil || u.Opaque != "" {
		return fail("httpGet.path %q must be a path, not a URL with a host", h.Path)
	}
	for i, hd := range h.HTTPHeaders {
		if !headerName.MatchString(hd.Name) {
			return fail("httpGet.httpHeaders[%d].name %q is not a valid header name", i, hd.Name)
		}
		if !httpguts.ValidHeaderFieldValue(hd.Value) {
			return fail("httpGet.httpHeaders[%d] (%s) has a value with control characters", i, hd.Name)
		}
	}
	return nil
}

func validatePort(fail func(string, ...any) error, field string, port intorstr.IntOrString) error {
	if port.Type != intorstr.Int {
		// Only the injector knows the container's ports; the proxy cannot
		// resolve a name.
		return fail("%s %q is a string: named ports must be resolved to numbers by the injector", field, port.StrVal)
	}
	if port.IntVal < 1 || port.IntVal > 65535 {
		return fail("%s %d is out of range 1-65535", field, port.IntVal)
	}
	return nil
}
