package proxy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/mesh-dev/mesh/proxy/normalize"
	"github.com/mesh-dev/mesh/proxy/origdst"
)

// ALPN marks a TLS connection between mesh proxies that carries one
// application connection's bytes (opaque TCP, or HTTP the server side
// detects).
const ALPN = "mesh/1"

// ALPNH2 marks a pooled TLS connection between mesh proxies that carries
// HTTP/2: requests from any number of application connections, HTTP/1.1
// ones upgraded (OrigProtoHeader says so) and HTTP/2 ones as they are.
const ALPNH2 = "mesh/h2"

// Default ports.
const (
	DefaultInboundPort  = 15006
	DefaultOutboundPort = 15001
	DefaultAdminPort    = 15020
)

// Mode is how the inbound side treats plaintext, or the outbound side
// treats destinations outside the mesh.
type Mode string

// Modes.
const (
	// Strict accepts (inbound) or originates (outbound) mesh mTLS only.
	Strict Mode = "strict"
	// Permissive also accepts plaintext inbound and passes plaintext
	// outbound to destinations outside the mesh.
	Permissive Mode = "permissive"
)

// Identity is where the proxy's SVID and trust bundle come from.
// identity/source.Source is one.
type Identity interface {
	x509svid.Source
	x509bundle.Source
}

// Destinations says what is at an address. The controller's destination
// watch (package controlplane/client) implements it in production;
// StaticDestinations in tests and `mesh-proxy run --destinations`;
// standalone mode has a table of its own, with each destination's protocol.
type Destinations interface {
	// Lookup says what is at addr. It may wait, up to ctx's deadline, for
	// an answer not known yet; an error means there is no answer, and the
	// connection is refused: a destination that might be meshed is never
	// dialled in plaintext. An address the mesh knows nothing of is
	// Destination{}: not meshed.
	Lookup(ctx context.Context, addr netip.AddrPort) (Destination, error)
}

// Destination is what the proxy knows of an address.
type Destination struct {
	// Meshed: the destination runs a proxy; it is dialled over mTLS and
	// must present Identity.
	Meshed   bool
	Identity spiffeid.ID
	// Service: the address is a Service's; the proxy dials one of its
	// ready Endpoints itself, picked per request on the HTTP path and per
	// connection for opaque TCP, requiring that endpoint's identity. A
	// Service with no ready endpoint is refused (503 for HTTP).
	Service   bool
	Endpoints []Endpoint
	// Name is the Service's "namespace/name", for metrics and logs.
	Name string
	// Protocol is what the Service port declares it speaks (zero: not
	// declared, detected from the client's first bytes).
	Protocol AppProtocol
	// OpaquePorts are a pod's ports never inspected for HTTP.
	OpaquePorts []uint16
	// RequestTimeout bounds a request to the Service, from its headers to
	// the end of its response; zero means none. ConnectTimeout bounds
	// connecting to one of its endpoints; zero means Config.ConnectTimeout.
	RequestTimeout, ConnectTimeout time.Duration
}

// Endpoint is one ready backend of a Service.
type Endpoint struct {
	Addr     netip.AddrPort
	Meshed   bool
	Identity spiffeid.ID
}

// AppProtocol is what a port of the application speaks, as declared by
// the Service port's appProtocol or name, a pod annotation or a flag.
type AppProtocol string

// Application protocols.
const (
	// ProtocolHTTP: HTTP/1.1 or HTTP/2 (h2c); every request is decided.
	ProtocolHTTP AppProtocol = "http"
	// ProtocolGRPC: gRPC, that is HTTP/2; every call is decided.
	ProtocolGRPC AppProtocol = "grpc"
	// ProtocolOpaque: any TCP protocol, never inspected; one decision per
	// connection. Declare server-first protocols (MySQL, SMTP, ...) so.
	ProtocolOpaque AppProtocol = "opaque"
)

// ParseAppProtocol checks a protocol's name.
func ParseAppProtocol(s string) (AppProtocol, error) {
	switch p := AppProtocol(s); p {
	case ProtocolHTTP, ProtocolGRPC, ProtocolOpaque:
		return p, nil
	}
	return "", fmt.Errorf("proxy: protocol %q is not one of http, grpc, opaque", s)
}

// Config configures a Proxy.
type Config struct {
	// Identity gives the proxy's SVID and bundle. Required.
	Identity Identity
	// TrustDomain of the mesh. Required.
	TrustDomain spiffeid.TrustDomain
	// Destinations maps addresses to expected identities. Required.
	Destinations Destinations
	// Authorizer decides inbound connections. Zero means AllowAll.
	Authorizer Authorizer
	// InboundMode is Strict or Permissive. Zero means Strict.
	InboundMode Mode
	// OutboundMode is Strict or Permissive. Zero means Permissive.
	OutboundMode Mode
	// InboundAddr and AdminAddr are where those listeners bind. Zero means
	// all addresses (IPv4 and IPv6) on the default ports. AdminAddr "-"
	// means no admin server.
	InboundAddr, AdminAddr string
	// OutboundAddr is where the outbound listener binds. Zero means
	// loopback on the default port: iptables redirects the pod's own
	// connections there, and nothing outside the pod can reach it.
	OutboundAddr string
	// AppHost is where inbound connections are delivered. Zero means the
	// connection's original destination address, the pod's own IP, so
	// that listeners bound to loopback only (debug, pprof, other
	// sidecars' admin ports) stay private to the pod, as they are
	// without a mesh. Standalone deployments set it.
	AppHost string
	// AppHealth serves the kubelet's rewritten probes under /app-health/
	// on the admin port (package probe). Zero means none.
	AppHealth http.Handler
	// PortProtocols declares what the application's ports speak. A port
	// not listed is detected from the client's first bytes, and detection
	// never weakens enforcement: on a port where a policy has HTTP fields
	// a connection that is not HTTP is refused.
	PortProtocols map[uint16]AppProtocol
	// PathNormalization is how request paths are normalised before they
	// are authorized and forwarded. Zero means normalize.DefaultMode.
	PathNormalization normalize.Mode
	// HeadersWithUnderscores is what happens to a request header whose
	// name has an underscore, which CGI-style applications read as the
	// same header as one with a dash. Zero means normalize.Reject.
	HeadersWithUnderscores normalize.UnderscoreAction
	// Listen and Dial open sockets. Zero means the net package's. Tests
	// use them to open sockets inside a network namespace.
	Listen func(ctx context.Context, network, addr string) (net.Listener, error)
	Dial   func(ctx context.Context, network, addr string) (net.Conn, error)
	// OriginalDst recovers a redirected connection's destination. Zero
	// means SO_ORIGINAL_DST (package origdst); benchmarks on loopback
	// replace it.
	OriginalDst func(*net.TCPConn) (netip.AddrPort, error)
	// DetectTimeout bounds how long the inbound side waits for a client's
	// TLS ClientHello, and for the first request on a port that must be
	// HTTP. Zero means 5 seconds.
	DetectTimeout time.Duration
	// ServerFirstWait is how long the inbound side waits for a client's
	// first bytes, on a port whose protocol is neither declared nor
	// required to be HTTP, before it connects to the application to see
	// whether the application speaks first (SMTP, MySQL, ...). There it
	// never decides the protocol by itself: a client that is silent for
	// longer still gets its request read as HTTP, whatever its timing.
	// The outbound side waits as long for its application's first bytes
	// before it carries a silent connection opaque: that only forgoes
	// per-request balancing, since the server side decides again. Zero means
	// 500 milliseconds.
	ServerFirstWait time.Duration
	// ConnectTimeout bounds upstream connects and TLS handshakes. Zero
	// means 10 seconds.
	ConnectTimeout time.Duration
	// IdleTimeout closes opaque TCP connections and upgraded HTTP streams
	// (WebSockets) on which no byte moved for this long. Zero means one
	// hour.
	IdleTimeout time.Duration
	// MaxConnections bounds the connections the proxy serves at once,
	// inbound and outbound together; beyond it new ones are closed at
	// once and counted. Zero means 10000.
	MaxConnections int
	// DrainTimeout bounds how long Run lets open connections finish after
	// its context ends. Zero means 20 seconds.
	DrainTimeout time.Duration
	// MaxRoutes bounds the route templates that label the HTTP metrics,
	// per direction; requests past it are labelled "other". Zero means
	// DefaultMaxRoutes.
	MaxRoutes int
	// Readiness, when set, must also be ready for the proxy to be: the
	// control-plane client is, once it has its first policy, destinations
	// and trust bundle. Zero means the SVID and the policy only.
	Readiness Readier
	// Policy, when set, says which policy the proxy enforces now, for the
	// admin endpoint's /policy (meshctl check compares it with what the
	// controller computes for the pod). Zero, or a nil answer, means
	// /policy answers 503.
	Policy func() *PolicyInfo
	// Registerer receives the proxy's metrics. Zero means none.
	Registerer prometheus.Registerer
	// Gatherer serves /metrics. Zero means prometheus.DefaultGatherer.
	Gatherer prometheus.Gatherer
	// Logger. Zero means slog.Default().
	Logger *slog.Logger
}

func (c *Config) setDefaults() error {
	var errs []error
	if c.Identity == nil {
		errs = append(errs, errors.New("proxy: Config.Identity is required"))
	}
	if c.TrustDomain.IsZero() {
		errs = append(errs, errors.New("proxy: Config.TrustDomain is required"))
	}
	if c.Destinations == nil {
		errs = append(errs, errors.New("proxy: Config.Destinations is required"))
	}
	if c.Authorizer == nil {
		c.Authorizer = AllowAll{}
	}
	if c.InboundMode == "" {
		c.InboundMode = Strict
	}
	if c.OutboundMode == "" {
		c.OutboundMode = Permissive
	}
	for _, m := range []Mode{c.InboundMode, c.OutboundMode} {
		if m != Strict && m != Permissive {
			errs = append(errs, fmt.Errorf("proxy: mode %q is neither strict nor permissive", m))
		}
	}
	def := func(s *string, v string) {
		if *s == "" {
			*s = v
		}
	}
	def(&c.InboundAddr, fmt.Sprintf(":%d", DefaultInboundPort))
	def(&c.OutboundAddr, fmt.Sprintf("127.0.0.1:%d", DefaultOutboundPort))
	def(&c.AdminAddr, fmt.Sprintf(":%d", DefaultAdminPort))
	for port, proto := range c.PortProtocols {
		if _, err := ParseAppProtocol(string(proto)); err != nil {
			errs = append(errs, fmt.Errorf("proxy: port %d: %w", port, err))
		}
	}
	if c.PathNormalization == 0 {
		c.PathNormalization = normalize.DefaultMode
	}
	if c.HeadersWithUnderscores == 0 {
		c.HeadersWithUnderscores = normalize.DefaultUnderscoreAction
	}
	if c.MaxConnections == 0 {
		c.MaxConnections = 10000
	}
	if c.MaxRoutes == 0 {
		c.MaxRoutes = DefaultMaxRoutes
	}
	if c.MaxConnections < 0 {
		errs = append(errs, fmt.Errorf("proxy: MaxConnections %d is negative", c.MaxConnections))
	}
	if c.Listen == nil {
		var lc net.ListenConfig
		c.Listen = lc.Listen
	}
	if c.Dial == nil {
		var d net.Dialer
		c.Dial = d.DialContext
	}
	if c.OriginalDst == nil {
		c.OriginalDst = origdst.Get
	}
	dur := func(d *time.Duration, v time.Duration) {
		if *d == 0 {
			*d = v
		}
	}
	dur(&c.DetectTimeout, 5*time.Second)
	dur(&c.ServerFirstWait, 500*time.Millisecond)
	dur(&c.IdleTimeout, time.Hour)
	dur(&c.ConnectTimeout, 10*time.Second)
	dur(&c.DrainTimeout, 20*time.Second)
	if c.Gatherer == nil {
		c.Gatherer = prometheus.DefaultGatherer
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return errors.Join(errs...)
}

// StaticDestinations is a fixed address → identity table: the meshed
// destinations; every other address is not meshed.
type StaticDestinations map[netip.AddrPort]spiffeid.ID

// Lookup implements Destinations.
func (s StaticDestinations) Lookup(_ context.Context, addr netip.AddrPort) (Destination, error) {
	id, ok := s[addr]
	return Destination{Meshed: ok, Identity: id}, nil
}
