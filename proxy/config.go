package proxy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/mesh-dev/mesh/proxy/origdst"
)

// ALPN marks a TLS connection between mesh proxies.
const ALPN = "mesh/1"

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

// Destinations says which identity runs at an address. The controller's
// watch implements it in production; StaticDestinations in tests.
type Destinations interface {
	// Lookup returns the identity expected at addr, and whether addr is a
	// meshed workload at all.
	Lookup(addr netip.AddrPort) (id spiffeid.ID, meshed bool)
}

// Probe is a kubelet HTTP probe the proxy lets through in strict mode.
type Probe struct {
	Port uint16
	Path string
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
	// InboundAddr, OutboundAddr and AdminAddr are where the listeners
	// bind. Zero means 0.0.0.0 on the default ports; AdminAddr "-" means
	// no admin server.
	InboundAddr, OutboundAddr, AdminAddr string
	// AppHost is where inbound connections are delivered. Zero means
	// 127.0.0.1: the app must listen on loopback or all addresses.
	AppHost string
	// ProbeSources are the node addresses kubelet probes come from.
	ProbeSources []netip.Addr
	// Probes are the HTTP GET probes allowed from ProbeSources in strict
	// mode.
	Probes []Probe
	// Listen and Dial open sockets. Zero means the net package's. Tests
	// use them to open sockets inside a network namespace.
	Listen func(ctx context.Context, network, addr string) (net.Listener, error)
	Dial   func(ctx context.Context, network, addr string) (net.Conn, error)
	// OriginalDst recovers a redirected connection's destination. Zero
	// means SO_ORIGINAL_DST (package origdst); benchmarks on loopback
	// replace it.
	OriginalDst func(*net.TCPConn) (netip.AddrPort, error)
	// DetectTimeout bounds how long the inbound side waits for a client's
	// first bytes. Zero means 5 seconds.
	DetectTimeout time.Duration
	// HTTPDetectTimeout bounds how long the inbound side waits, inside an
	// mTLS connection, for the client's first bytes to tell HTTP from
	// opaque TCP. Zero means 1 second: the delay a protocol whose server
	// speaks first pays once per connection, unless its port is in
	// OpaquePorts. Too short a wait would let a slow HTTP client fall back
	// to opaque TCP, where HTTP rules never match.
	HTTPDetectTimeout time.Duration
	// OpaquePorts are inbound ports whose traffic is never inspected for
	// HTTP: server-first protocols (MySQL, SMTP, ...) skip the wait.
	OpaquePorts []uint16
	// ConnectTimeout bounds upstream connects and TLS handshakes. Zero
	// means 10 seconds.
	ConnectTimeout time.Duration
	// DrainTimeout bounds how long Run lets open connections finish after
	// its context ends. Zero means 20 seconds.
	DrainTimeout time.Duration
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
	def(&c.InboundAddr, fmt.Sprintf("0.0.0.0:%d", DefaultInboundPort))
	def(&c.OutboundAddr, fmt.Sprintf("0.0.0.0:%d", DefaultOutboundPort))
	def(&c.AdminAddr, fmt.Sprintf("0.0.0.0:%d", DefaultAdminPort))
	def(&c.AppHost, "127.0.0.1")
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
	dur(&c.HTTPDetectTimeout, time.Second)
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

// StaticDestinations is a fixed address → identity table.
type StaticDestinations map[netip.AddrPort]spiffeid.ID

// Lookup implements Destinations.
func (s StaticDestinations) Lookup(addr netip.AddrPort) (spiffeid.ID, bool) {
	id, ok := s[addr]
	return id, ok
}
