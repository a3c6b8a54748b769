package proxy

import (
	"net/netip"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Request is what the authorization hook decides on: one inbound opaque
// TCP connection, after the mTLS handshake and before any byte reaches the
// application, or one HTTP request (HTTP set), before it is forwarded.
type Request struct {
	// Peer is the client's verified SPIFFE ID; zero when Authenticated is
	// false (plaintext in permissive mode).
	Peer          spiffeid.ID
	Authenticated bool
	// Source is the client's address.
	Source netip.AddrPort
	// DestinationPort is the port the client connected to.
	DestinationPort uint16
	// Protocol is "tcp" for opaque TCP, "http1", "http2" or "grpc".
	Protocol string
	// HTTP is set for an HTTP request.
	HTTP *HTTPRequest
}

// HTTPRequest is the HTTP part of a Request. Path is the normalised path:
// the one authorized, audited and forwarded to the application.
type HTTPRequest struct {
	Method, Path, Host string
}

// Decision is the hook's verdict. Policy, Rule and Reason name what
// decided, for the log, the metrics and the audit trail.
type Decision struct {
	Allow                bool
	Policy, Rule, Reason string
	// Audit names the AUDIT policy that matched, if any.
	Audit string
	// DryRun, when set, is what the decision would have been were the
	// dry-run policies enforced.
	DryRun *Decision
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
// every request it decided, with the decision the proxy enforced: after an
// HTTP response (with its status), and once per opaque TCP connection
// (status 0). It writes audit records; it must not block.
type Observer interface {
	Observe(r *Request, d Decision, status int)
}

// Refusal is a connection or request the proxy refused before or without a
// policy decision: plaintext in strict mode, a failed or wrong-identity
// handshake, bytes that are not the HTTP the port requires, a malformed
// request.
type Refusal struct {
	// Direction is "inbound" or "outbound".
	Direction string
	// Reason is a fixed word (plaintext_in_strict_mode, handshake_failed,
	// wrong_identity, not_http, bad_request, loop, ...); Detail says more.
	Reason, Detail string
	// Source and Destination are the connection's addresses.
	Source, Destination netip.AddrPort
	// Peer is the peer's identity when it is known.
	Peer spiffeid.ID
	// Suppressed counts the refusals of the same reason that were not
	// reported since the last one that was (rate limiting).
	Suppressed int64
}

// RefusalObserver, when the Authorizer also implements it, is told of
// refusals, at most a few per second per reason, each with the count of
// those suppressed in between. It must not block.
type RefusalObserver interface {
	Refused(Refusal)
}

// HTTPPolicy, when the Authorizer also implements it, says on which ports
// a policy reads HTTP fields. On those ports the proxy reads every
// connection as HTTP and refuses one that is not, instead of deciding it
// once as opaque TCP.
type HTTPPolicy interface {
	RequiresHTTP(port uint16) bool
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
