package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httputil"
	"net/netip"
	"slices"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"golang.org/x/net/http/httpguts"

	"github.com/mesh-dev/mesh/proxy/h1"
	"github.com/mesh-dev/mesh/proxy/sniff"
)

// The outbound side's HTTP path: an application connection that speaks
// HTTP/1.1 or HTTP/2 to a meshed destination is served here, and each of
// its requests is sent on its own, to an endpoint picked for it (balance.go),
// over a pooled HTTP/2 connection to that endpoint's proxy (pool.go).

// maxAttempts bounds how many endpoints one request is tried on. Only a
// request that reached no application is tried again.
const maxAttempts = 3

// errNoEndpoints: the Service has no ready endpoint the proxy may use.
var errNoEndpoints = errors.New("no ready endpoint")

// outboundHTTP is the proxy's one reverse proxy for outbound requests.
type outboundHTTP struct {
	p  *Proxy
	rp *httputil.ReverseProxy
	// upgrade carries requests that switch protocols (WebSocket): each
	// gets its own mTLS connection (ALPN), as an opaque stream would.
	upgrade *http.Transport
	// srv serves every application connection that speaks HTTP.
	srv *connServer
}

// outReq is what the outbound side knows of one request, in its context.
type outReq struct {
	src    netip.AddrPort
	dest   Destination
	eps    []Endpoint
	labels *httpLabels
}

type outReqKey struct{}

func (p *Proxy) newOutboundHTTP() *outboundHTTP {
	o := &outboundHTTP{p: p}
	o.upgrade = &http.Transport{
		DialTLSContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			t := ctx.Value(targetKey{}).(*target)
			return p.dialMesh(ctx, t, ALPN)
		},
		DisableKeepAlives:  true,
		DisableCompression: true,
	}
	o.rp = &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			// The endpoint is picked per attempt, in RoundTrip.
			pr.Out.URL.Scheme, pr.Out.URL.Host = "https", "endpoint.invalid"
			pr.Out.Host = pr.In.Host
			for _, h := range meshHeaders {
				pr.Out.Header.Del(h)
			}
			// For the endpoint's proxy (pooled HTTP/2): the app spoke
			// HTTP/1.1. Set once here, on ReverseProxy's own copy of the
			// headers, not per attempt; an endpoint outside the mesh
			// gets a copy without it.
			if pr.In.ProtoMajor == 1 {
				pr.Out.Header.Set(OrigProtoHeader, "HTTP/1.1")
			}
		},
		Transport: o,
		// Responses of unknown length (gRPC, streams) are flushed at
		// once by ReverseProxy; others are written as they fill buffers.
		FlushInterval: 0,
		BufferPool:    bufferPool{},
		ErrorLog:      log.New(slogWriter{p}, "", 0),
		ErrorHandler:  o.fail,
		ModifyResponse: func(resp *http.Response) error {
			resp.Header.Del(notDeliveredHeader)
			keepTrailersOnly(resp)
			return nil
		},
	}
	return o
}

// serveOutboundHTTP serves one application connection that speaks HTTP to
// dst, until it is done.
//
// HTTP/1 passes the same strict framing gate (package h1) as on the
// inbound side: a request Go's parser would read one way and another
// parser another is refused here, never re-framed into something clean.
func (p *Proxy) serveOutboundHTTP(conn net.Conn, src, dst netip.AddrPort, proto sniff.Protocol) {
	oc := &outConn{src: src, dst: dst}
	if proto == sniff.HTTP1 {
		oc.gate = h1.NewGate(conn, h1.Config{MaxHeadBytes: MaxHeaderBytes})
		conn = oc.gate
	}
	oc.Conn, oc.closed = conn, make(chan struct{})
	p.m.openOut.Inc()
	p.outHTTP.srv.serve(oc, &oc.closeNotifier)
	if oc.gate != nil {
		// Closed and quiesced: the gate's buffer is free for the next.
		oc.gate.Release()
	}
	p.m.openOut.Dec()
}

// outConn is an application connection served by the outbound side's one
// HTTP server (connserver.go), with what its handler must know of it.
type outConn struct {
	closeNotifier
	src, dst netip.AddrPort
	// gate is HTTP/1's framing gate; nil for HTTP/2.
	gate *h1.Gate
}

type outConnKey struct{}

// newOutboundServer is the one HTTP server of the outbound side. It keeps
// serving while the proxy drains (no Shutdown): the application may still
// be finishing its own work, and calling others, while its pod shuts down;
// the drain timeout closes what is left.
func (p *Proxy) newOutboundServer() *connServer {
	var protos http.Protocols
	protos.SetHTTP1(true)
	protos.SetUnencryptedHTTP2(true)
	srv := p.newServer(http.HandlerFunc(p.outHTTP.serveConn), &protos)
	srv.ConnContext = func(ctx context.Context, c net.Conn) context.Context {
		return context.WithValue(ctx, outConnKey{}, c)
	}
	return newConnServer(srv)
}

// serveConn is the outbound server's handler: every request of every
// application connection.
func (o *outboundHTTP) serveConn(w http.ResponseWriter, r *http.Request) {
	oc, ok := r.Context().Value(outConnKey{}).(*outConn)
	if !ok {
		// Only connections from serveOutboundHTTP are handed over.
		proxyError(&statusWriter{ResponseWriter: w}, r, http.StatusInternalServerError, grpcUnavailable, "internal", "a connection the outbound side does not know")
		return
	}
	if oc.gate != nil && oc.gate.Opaque() {
		// The gate stopped at an upgrade request: unless protocols
		// switch, nothing after it may be read as HTTP.
		w = h1.CloseAfter(w)
	}
	o.serve(w, r, oc.src, oc.dst, oc.gate)
}

// serve sends one request on.
func (o *outboundHTTP) serve(w http.ResponseWriter, r *http.Request, src, dst netip.AddrPort, gate *h1.Gate) {
	p := o.p
	start := time.Now()
	sw := &statusWriter{ResponseWriter: w}
	labels := httpLabels{direction: "outbound", peer: "-", method: methodLabel(r.Method), route: p.routesOut.label(r.URL.EscapedPath())}
	defer func() { p.observeHTTP(&labels, sw, r, start) }()
	if gate != nil {
		if reason, bad := gate.Rejected(r); bad {
			p.refuseRequestFrom(sw, "outbound", src, dst, spiffeid.ID{}, &badRequest{"malformed", "malformed request: " + reason})
			return
		}
	}

	if r.Method == http.MethodConnect {
		// A CONNECT tunnel inside HTTP/2 (RFC 8441 WebSockets) is not
		// carried between proxies.
		proxyError(sw, r, http.StatusNotImplemented, grpcUnavailable, "unsupported", "a CONNECT after other requests on one connection, or over HTTP/2, is not carried by the mesh (a connection that starts with CONNECT is carried opaque)")
		return
	}
	// The destinations are looked up per request, so a long-lived
	// connection sees endpoints come and go. They were known when the
	// connection came (outbound waited for them): a peek, no waiting.
	d, err := p.peek(dst)
	if err != nil {
		proxyError(sw, r, http.StatusServiceUnavailable, grpcUnavailable, "destination_unknown", err.Error())
		return
	}
	if d.Service {
		labels.service = d.Name
	}
	eps := endpointsOf(d, dst)
	if p.cfg.OutboundMode == Strict {
		eps = slices.DeleteFunc(slices.Clone(eps), func(ep Endpoint) bool { return !ep.Meshed })
	}
	if len(eps) == 0 {
		proxyError(sw, r, http.StatusServiceUnavailable, grpcUnavailable, "no_endpoints", noEndpointsDetail(d, dst))
		return
	}
	ctx := r.Context()
	if d.RequestTimeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, d.RequestTimeout)
		defer cancel()
	}
	or := &outReq{src: src, dest: d, eps: eps, labels: &labels}
	o.rp.ServeHTTP(sw, r.WithContext(context.WithValue(ctx, outReqKey{}, or)))
}

func noEndpointsDetail(d Destination, dst netip.AddrPort) string {
	if d.Service {
		return fmt.Sprintf("service %s (%s) has no ready endpoint", d.Name, dst)
	}
	return fmt.Sprintf("%s is not reachable in the mesh", dst)
}

// endpointsOf is where requests for dst may go: a Service's ready
// endpoints, or the one pod at dst.
func endpointsOf(d Destination, dst netip.AddrPort) []Endpoint {
	if d.Service {
		return d.Endpoints
	}
	return []Endpoint{{Addr: dst, Meshed: d.Meshed, Identity: d.Identity}}
}

// RoundTrip sends one request to an endpoint, and to another when the
// first could not be reached or its proxy could not reach its
// application: never when the request may have been processed.
func (o *outboundHTTP) RoundTrip(req *http.Request) (*http.Response, error) {
	p := o.p
	or, _ := req.Context().Value(outReqKey{}).(*outReq)
	if or == nil {
		return nil, errors.New("proxy: outbound request without its destination")
	}
	var body *replayBody
	if req.Body != nil && req.Body != http.NoBody {
		body = newReplayBody(req.Body)
	}
	upgrade := httpguts.HeaderValuesContainsToken(req.Header["Connection"], "Upgrade") && req.Header.Get("Upgrade") != ""
	var tried []endpointKey
	var lastErr error
	// again is the body's reader for the next attempt, taken in deciding
	// to try again.
	var again io.ReadCloser
	for attempt := 0; attempt < maxAttempts; attempt++ {
		ep, st, ok := p.bal.pick(or.eps, func(ep Endpoint) bool { return slices.Contains(tried, keyOf(ep)) })
		if !ok {
			break
		}
		if attempt > 0 {
			p.m.retries.WithLabelValues(or.labels.service, retryReason(lastErr)).Inc()
		}
		out := *req
		u := *req.URL
		out.URL = &u
		out.URL.Host = ep.Addr.String()
		if body != nil {
			if again == nil {
				var err error
				if again, err = body.next(); err != nil {
					break
				}
			}
			out.Body, again = again, nil
			out.GetBody = body.next
		}
		t := &target{key: keyOf(ep), connectTimeout: or.dest.ConnectTimeout, src: or.src}
		var rt http.RoundTripper
		switch {
		case !ep.Meshed:
			out.URL.Scheme = "http"
			out.Header = out.Header.Clone()
			out.Header.Del(OrigProtoHeader)
			rt = p.plain
		case upgrade:
			// Over mesh/1 the header means nothing; the server side
			// removes it.
			rt = o.upgrade
		default:
			rt = p.pool.t
		}
		out2 := out.WithContext(context.WithValue(out.Context(), targetKey{}, t))
		st.pending.Add(1)
		resp, err := rt.RoundTrip(out2)
		if err != nil {
			st.pending.Add(-1)
			if unreached(err) {
				st.failed(time.Now())
				tried = append(tried, keyOf(ep))
				lastErr = err
				continue
			}
			or.labels.peer = peerLabel(ep)
			return nil, err
		}
		or.labels.peer = peerLabel(ep)
		if !ep.Meshed {
			// Only proxies say what a proxy did.
			for _, h := range meshHeaders {
				resp.Header.Del(h)
			}
		}
		// The body's next reader is taken in the same step as asking
		// whether there can be one (next): this attempt's body writer may
		// still start reading in between, and a body it began is no
		// longer whole (asking first, then taking, failed 503 spuriously).
		if ep.Meshed && resp.Header.Get(notDeliveredHeader) != "" && attempt+1 < maxAttempts &&
			hasOther(or.eps, append(tried, keyOf(ep))) && (body == nil || body.take(&again)) {
			// Its proxy could not reach the application (a pod shutting
			// down): nothing was processed, so another endpoint may
			// have the request, whatever its method.
			resp.Body.Close()
			st.pending.Add(-1)
			st.failed(time.Now())
			tried = append(tried, keyOf(ep))
			lastErr = errNotDelivered
			continue
		}
		st.succeeded()
		if resp.StatusCode == http.StatusSwitchingProtocols {
			// The body is the switched connection, which ReverseProxy
			// writes to: kept as it is, and no longer a request.
			st.pending.Add(-1)
			return resp, nil
		}
		resp.Body = &doneBody{ReadCloser: resp.Body, st: st}
		return resp, nil
	}
	if lastErr == nil {
		lastErr = errNoEndpoints
	}
	return nil, lastErr
}

var errNotDelivered = errors.New("the endpoint's proxy could not reach its application")

// unreached reports whether err means the request reached no endpoint.
func unreached(err error) bool {
	var ce *connectError
	if errors.As(err, &ce) {
		return true
	}
	var op *net.OpError
	return errors.As(err, &op) && op.Op == "dial"
}

func retryReason(err error) string {
	if errors.Is(err, errNotDelivered) {
		return "not_delivered"
	}
	return "connect_failed"
}

func hasOther(eps []Endpoint, tried []endpointKey) bool {
	for _, ep := range eps {
		if !slices.Contains(tried, keyOf(ep)) {
			return true
		}
	}
	return false
}

func peerLabel(ep Endpoint) string {
	if !ep.Meshed {
		return "unmeshed"
	}
	return ep.Identity.String()
}

// fail answers a request that got no response: 503 when no endpoint could
// have it, 504 when its timeout passed, 502 when its endpoint failed it;
// gRPC statuses UNAVAILABLE and DEADLINE_EXCEEDED for gRPC.
func (o *outboundHTTP) fail(w http.ResponseWriter, r *http.Request, err error) {
	sw, ok := w.(*statusWriter)
	if !ok {
		w.WriteHeader(http.StatusBadGateway)
		return
	}
	var ce *connectError
	switch {
	case errors.Is(err, errNoEndpoints):
		or, _ := r.Context().Value(outReqKey{}).(*outReq)
		detail := ""
		if or != nil {
			detail = fmt.Sprintf("service %s has no ready endpoint", or.dest.Name)
		}
		proxyError(sw, r, http.StatusServiceUnavailable, grpcUnavailable, "no_endpoints", detail)
	case errors.As(err, &ce):
		proxyError(sw, r, http.StatusServiceUnavailable, grpcUnavailable, ce.reason, ce.Error())
	case errors.Is(err, errNotDelivered):
		proxyError(sw, r, http.StatusServiceUnavailable, grpcUnavailable, "not_delivered", err.Error())
	case errors.Is(r.Context().Err(), context.DeadlineExceeded) || errors.Is(err, context.DeadlineExceeded):
		proxyError(sw, r, http.StatusGatewayTimeout, grpcDeadlineExceeded, "timeout", "the request's timeout passed")
	case errors.Is(err, context.Canceled):
		// The application went away: nobody reads this answer.
		sw.proxyErr = "cancelled"
		sw.WriteHeader(http.StatusBadGateway)
		return
	default:
		proxyError(sw, r, http.StatusBadGateway, grpcUnavailable, "upstream_failed", err.Error())
	}
	o.p.warn("outbound request failed", "reason", sw.proxyErr, "err", err)
}

// warn logs, rationed like refusals.
func (p *Proxy) warn(msg string, attrs ...any) {
	ok, n := p.logged.Allow()
	if !ok {
		return
	}
	if n > 0 {
		attrs = append(attrs, "suppressed", n)
	}
	p.cfg.Logger.Warn(msg, attrs...)
}

// doneBody ends a request's count of outstanding requests on its endpoint
// when the response body is done.
type doneBody struct {
	io.ReadCloser
	st   *endpointStats
	done atomic.Bool
}

func (b *doneBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if err != nil {
		b.finish()
	}
	return n, err
}

func (b *doneBody) Close() error {
	b.finish()
	return b.ReadCloser.Close()
}

func (b *doneBody) finish() {
	if b.done.CompareAndSwap(false, true) {
		b.st.pending.Add(-1)
	}
}

// dialMesh connects to t's endpoint over mTLS with alpn, requiring its
// identity.
func (p *Proxy) dialMesh(ctx context.Context, t *target, alpn string) (net.Conn, error) {
	addr := t.key.addr.String()
	timeout := t.connectTimeout
	if timeout <= 0 {
		timeout = p.cfg.ConnectTimeout
	}
	dctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	raw, err := p.cfg.Dial(dctx, "tcp", addr)
	if err != nil {
		return nil, &connectError{addr, "connect_failed", err}
	}
	conn := tls.Client(raw, p.clientTLS(t.key.id, addr, alpn))
	if err := conn.HandshakeContext(dctx); err != nil {
		raw.Close()
		reason := handshakeReason(err)
		p.m.hsErrors.WithLabelValues("outbound", reason).Inc()
		p.refuse("outbound", "handshake_failed", "destination", addr, "want", t.key.id.String(), "err", err)
		ev := "handshake_failed"
		if reason == "wrong_identity" {
			ev = "wrong_identity"
		}
		p.audit(Refusal{Direction: "outbound", Reason: ev, Detail: reason + ": " + err.Error(), Source: t.src, Destination: t.key.addr, Peer: t.key.id})
		return nil, &connectError{addr, ev, err}
	}
	cs := conn.ConnectionState()
	p.m.handshakes.WithLabelValues("outbound", tlsVersion(cs.Version), strconv.FormatBool(cs.DidResume)).Inc()
	return conn, nil
}

// isSniffHTTP reports whether proto is HTTP the outbound side serves.
func isSniffHTTP(proto sniff.Protocol) bool { return proto == sniff.HTTP1 || proto == sniff.HTTP2 }
