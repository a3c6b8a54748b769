package proxy

import (
	"net/netip"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Request is what the authorization hook decides on: one inbound TCP
// connection, after the mTLS handshake and before any byte reaches the
// application.
//
// When the policy engine (package authz) is wired in, HTTP requests will be
// decided one by one with HTTP filled in; today the proxy decides per
// connection and HTTP is nil.
type Request struct {
	// Peer is the client's verified SPIFFE ID; zero when Authenticated is
	// false (plaintext in permissive mode).
	Peer          spiffeid.ID
	Authenticated bool
	// Source is the client's address.
	Source netip.AddrPort
	// DestinationPort is the port the client connected to.
	DestinationPort uint16
	// Protocol is "tcp" for opaque TCP.
	Protocol string
	// HTTP is set for an HTTP request.
	HTTP *HTTPRequest
}

// HTTPRequest is the HTTP part of a Request.
type HTTPRequest struct {
	Method, Path, Host string
}

// Decision is the hook's verdict. Policy, Rule and Reason name what
// decided, for the log, the metrics and the audit trail.
type Decision struct {
	Allow                bool
	Policy, Rule, Reason string
}

// Authorizer decides inbound requests. It must be fast and must not block:
// it runs on every connection.
type Authorizer interface {
	Authorize(*Request) Decision
}

// AllowAll allows everything: the hook until a policy is installed.
type AllowAll struct{}

// Authorize implements Authorizer.
func (AllowAll) Authorize(*Request) Decision {
	return Decision{Allow: true, Policy: "default:allow-all", Reason: "no policy installed"}
}

// AuthorizerFunc adapts a function to Authorizer.
type AuthorizerFunc func(*Request) Decision

// Authorize implements Authorizer.
func (f AuthorizerFunc) Authorize(r *Request) Decision { return f(r) }

// Observer, when the Authorizer also implements it, is told the outcome of
// every request it decided: after an HTTP response (with its status), and
// once per opaque TCP connection (status 0). It writes audit records; it
// must not block.
type Observer interface {
	Observe(r *Request, d Decision, status int)
}

// Readier, when the Authorizer also implements it, gates the proxy's
// readiness: a proxy with no policy yet is not ready.
type Readier interface {
	Ready() bool
}

// Notifier, when the Authorizer also implements it, signals policy
// changes: the proxy then re-decides its open TCP connections and closes
// those no longer allowed. (HTTP requests are decided one by one anyway.)
type Notifier interface {
	Updated() <-chan struct{}
}
