package identity

import (
	"errors"
	"fmt"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/keepalive"
)

// TransportConfig bounds what one connection to the identity service can
// hold: streams, header and message sizes, idle and total lifetime, and how
// often the client may ping. Each zero value means the default named in its
// comment; negative values are invalid.
type TransportConfig struct {
	// MaxConcurrentStreams per connection. Zero means 16: a proxy has one
	// Certify in flight at a time, and more streams only multiply what one
	// connection can demand.
	MaxConcurrentStreams uint32
	// HandshakeTimeout bounds the TLS handshake of a new connection. Zero
	// means 10 s, so half-open connections do not pile up.
	HandshakeTimeout time.Duration
	// MaxConnectionIdle closes a connection with no RPC for this long.
	// Zero means 5 min: proxies renew every half hour and redial cheaply.
	MaxConnectionIdle time.Duration
	// MaxConnectionAge closes any connection this old, after
	// MaxConnectionAgeGrace for RPCs in flight. Zero means 30 min and 30 s:
	// connections move to new controller replicas, and the grace exceeds
	// the longest Certify (review wait plus review timeout).
	MaxConnectionAge      time.Duration
	MaxConnectionAgeGrace time.Duration
	// PingInterval and PingTimeout: the server pings a connection quiet for
	// PingInterval and closes it if no answer comes within PingTimeout,
	// so dead peers free their resources. Zero means 2 min and 20 s.
	PingInterval time.Duration
	PingTimeout  time.Duration
	// MinPingInterval is the shortest interval at which a client may ping
	// during an RPC; a client that pings faster, or pings at all with no
	// RPC in flight, is sent GOAWAY and disconnected. Zero means 1 min.
	MinPingInterval time.Duration
}

// Transport defaults; see TransportConfig.
const (
	DefaultMaxConcurrentStreams  = 16
	DefaultHandshakeTimeout      = 10 * time.Second
	DefaultMaxConnectionIdle     = 5 * time.Minute
	DefaultMaxConnectionAge      = 30 * time.Minute
	DefaultMaxConnectionAgeGrace = 30 * time.Second
	DefaultPingInterval          = 2 * time.Minute
	DefaultPingTimeout           = 20 * time.Second
	DefaultMinPingInterval       = time.Minute
)

// maxHeaderListBytes bounds a request's headers. A Certify carries its
// token in the message, so its headers are a few hundred bytes; gRPC's own
// default would accept 16 MiB.
const maxHeaderListBytes = 16 << 10

// windowBytes is the fixed HTTP/2 flow-control window. A request is at
// most MaxRequestBytes, so the minimum window is enough; a fixed window
// also turns off gRPC's window growth, which would let one connection
// buffer megabytes.
const windowBytes = 64 << 10

// ServerOptions returns the gRPC server options of the identity service:
// the message size limit, cfg's stream, handshake and keepalive limits, and
// fixed header and window sizes. Add the credentials. Use it for every gRPC
// server that serves Server.
func ServerOptions(cfg TransportConfig) ([]grpc.ServerOption, error) {
	durations := []struct {
		name string
		v    *time.Duration
		def  time.Duration
	}{
		{"HandshakeTimeout", &cfg.HandshakeTimeout, DefaultHandshakeTimeout},
		{"MaxConnectionIdle", &cfg.MaxConnectionIdle, DefaultMaxConnectionIdle},
		{"MaxConnectionAge", &cfg.MaxConnectionAge, DefaultMaxConnectionAge},
		{"MaxConnectionAgeGrace", &cfg.MaxConnectionAgeGrace, DefaultMaxConnectionAgeGrace},
		{"PingInterval", &cfg.PingInterval, DefaultPingInterval},
		{"PingTimeout", &cfg.PingTimeout, DefaultPingTimeout},
		{"MinPingInterval", &cfg.MinPingInterval, DefaultMinPingInterval},
	}
	var errs []error
	for _, d := range durations {
		switch {
		case *d.v < 0:
			errs = append(errs, fmt.Errorf("identity: TransportConfig.%s is negative (%v)", d.name, *d.v))
		case *d.v == 0:
			*d.v = d.def
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	if cfg.MaxConcurrentStreams == 0 {
		cfg.MaxConcurrentStreams = DefaultMaxConcurrentStreams
	}
	return []grpc.ServerOption{
		grpc.MaxRecvMsgSize(MaxRequestBytes),
		grpc.MaxHeaderListSize(maxHeaderListBytes),
		grpc.MaxConcurrentStreams(cfg.MaxConcurrentStreams),
		grpc.InitialWindowSize(windowBytes),
		grpc.InitialConnWindowSize(windowBytes),
		grpc.ConnectionTimeout(cfg.HandshakeTimeout),
		grpc.KeepaliveParams(keepalive.ServerParameters{
			MaxConnectionIdle:     cfg.MaxConnectionIdle,
			MaxConnectionAge:      cfg.MaxConnectionAge,
			MaxConnectionAgeGrace: cfg.MaxConnectionAgeGrace,
			Time:                  cfg.PingInterval,
			Timeout:               cfg.PingTimeout,
		}),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{
			MinTime:             cfg.MinPingInterval,
			PermitWithoutStream: false,
		}),
	}, nil
}
