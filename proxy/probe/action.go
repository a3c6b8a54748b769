package probe

import "github.com/mesh-dev/mesh/internal/intorstr"

// The actions below are k8s.io/api/core/v1's HTTPGetAction,
// TCPSocketAction and GRPCAction as the injector writes them into
// MESH_APP_PROBES: the same fields under the same JSON names, so that what
// one injector version writes every proxy version reads. They are copies
// rather than the Kubernetes types because importing k8s.io/api/core/v1
// for them cost every proxy 0.8 MiB of idle RSS (its package
// initialisation and the pages it touches, docs/benchmarks.md, "What was
// tuned"). The injector converts at its edge (inject/probes.go), and a
// test there fails if Kubernetes' types gain a field these lack.

// URI schemes of HTTPGetAction.Scheme.
const (
	URISchemeHTTP  = "HTTP"
	URISchemeHTTPS = "HTTPS"
)

// HTTPGetAction.Protocol's values.
const (
	HTTPProtocolHTTP1 = "HTTP1"
	HTTPProtocolHTTP2 = "HTTP2"
)

// GRPCAction.Mode's values.
const (
	GRPCProbeModePlaintext = "Plaintext"
	GRPCProbeModeTLS       = "TLS"
)

// HTTPGetAction is an HTTP GET probe.
type HTTPGetAction struct {
	// Path to GET; it must start with "/".
	Path string `json:"path,omitempty"`
	// Port is a number: the injector resolves named ports.
	Port intorstr.IntOrString `json:"port"`
	// Host must be empty: probes reach the pod's own IP.
	Host string `json:"host,omitempty"`
	// Scheme is HTTP (also when empty) or HTTPS.
	Scheme string `json:"scheme,omitempty"`
	// HTTPHeaders are sent with the request.
	HTTPHeaders []HTTPHeader `json:"httpHeaders,omitempty"`
	// Protocol is Kubernetes' alpha HTTPProtocol (gate H2CContainerProbe):
	// nil or HTTP1 probes over HTTP/1.1, HTTP2 over cleartext HTTP/2 with
	// prior knowledge (h2c), which, as for the kubelet, needs scheme HTTP.
	Protocol *string `json:"protocol,omitempty"`
}

// HTTPHeader is one header of an HTTP probe.
type HTTPHeader struct {
	Name  string `json:"name"`
	Value string `json:"value"`
}

// TCPSocketAction is a TCP connect probe.
type TCPSocketAction struct {
	// Port is a number: the injector resolves named ports.
	Port intorstr.IntOrString `json:"port"`
	// Host must be empty: probes reach the pod's own IP.
	Host string `json:"host,omitempty"`
}

// GRPCAction is a grpc.health.v1 probe.
type GRPCAction struct {
	Port int32 `json:"port"`
	// Service is the name sent in the HealthCheckRequest; nil is "", the
	// whole server.
	Service *string `json:"service"`
	// Mode is Kubernetes' alpha GRPCProbeMode (gate GRPCContainerProbeTLS):
	// nil or Plaintext probes in plaintext, TLS over TLS without verifying
	// the app's certificate, as the kubelet.
	Mode *string `json:"mode,omitempty"`
}
