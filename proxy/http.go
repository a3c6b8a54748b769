package proxy

import (
	"context"
	"errors"
	"fmt"
	"log"
	"net"
	"net/http"
	"net/http/httputil"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"golang.org/x/net/http/httpguts"

	"github.com/mesh-dev/mesh/proxy/h1"
	"github.com/mesh-dev/mesh/proxy/normalize"
	"github.com/mesh-dev/mesh/proxy/sniff"
)

// PeerIdentityHeader carries the client's verified SPIFFE ID to the
// application. Whatever the client sent under this name, or any variant of
// it (any case, '_' for '-'), is removed first.
const PeerIdentityHeader = "X-Mesh-Peer-Identity"

// MaxHeaderBytes bounds the request headers the inbound HTTP layer reads.
const MaxHeaderBytes = 64 << 10

// httpTransports reach the local application: HTTP/1.1, and HTTP/2 with
// prior knowledge (h2c) for clients that spoke HTTP/2, gRPC among them.
type httpTransports struct {
	h1, h2 *http.Transport
	// direct, when set, takes the HTTP/1.1 requests (direct.go).
	direct *directTransport
}

func newHTTPTransports(dial func(context.Context, string, string) (net.Conn, error)) *httpTransports {
	h1 := &http.Transport{DialContext: dial, MaxIdleConnsPerHost: 64, IdleConnTimeout: 90 * time.Second, DisableCompression: true}
	h2 := &http.Transport{DialContext: dial, MaxIdleConnsPerHost: 64, IdleConnTimeout: 90 * time.Second, DisableCompression: true}
	var p http.Protocols
	p.SetUnencryptedHTTP2(true)
	h2.Protocols = &p
	return &httpTransports{h1: h1, h2: h2}
}

func (t *httpTransports) RoundTrip(r *http.Request) (*http.Response, error) {
	if r.ProtoMajor == 2 {
		return t.h2.RoundTrip(r)
	}
	if t.direct != nil {
		return t.direct.RoundTrip(r)
	}
	return t.h1.RoundTrip(r)
}

// closeNotifier reports when the HTTP server is done with a connection,
// and tracks activity for the idle timeout of an upgraded stream.
type closeNotifier struct {
	net.Conn
	once   sync.Once
	closed chan struct{}
	idle   atomic.Pointer[idleWatch]
	// reading is held (shared) by every Read: quiesce waits for reads in
	// progress, after which none touches the connection, whose buffers
	// can then be reused.
	reading sync.RWMutex
}

// quiesce waits until no Read is in progress; once closed, no later Read
// reaches the connection.
func (c *closeNotifier) quiesce() {
	c.reading.Lock()
	c.reading.Unlock() //nolint:staticcheck // a barrier, not a critical section
}

func (c *closeNotifier) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() {
		close(c.closed)
		if w := c.idle.Load(); w != nil {
			w.stop()
		}
	})
	return err
}

// CloseWrite lets net/http close gracefully after its own errors.
func (c *closeNotifier) CloseWrite() error {
	if hc, ok := c.Conn.(halfCloser); ok {
		return hc.CloseWrite()
	}
	return nil
}

func (c *closeNotifier) Read(b []byte) (int, error) {
	c.reading.RLock()
	defer c.reading.RUnlock()
	select {
	case <-c.closed:
		return 0, net.ErrClosed
	default:
	}
	n, err := c.Conn.Read(b)
	if w := c.idle.Load(); w != nil && n > 0 {
		w.touch()
	}
	return n, err
}

func (c *closeNotifier) Write(b []byte) (int, error) {
	if w := c.idle.Load(); w != nil {
		w.touch()
	}
	return c.Conn.Write(b)
}

// oneConn is a listener that yields one connection, then nothing.
type oneConn struct {
	c    net.Conn
	once sync.Once
	done chan struct{}
}

func (l *oneConn) Accept() (net.Conn, error) {
	var c net.Conn
	l.once.Do(func() { c = l.c })
	if c != nil {
		return c, nil
	}
	<-l.done
	return nil, net.ErrClosed
}

func (l *oneConn) Close() error   { return nil }
func (l *oneConn) Addr() net.Addr { return l.c.LocalAddr() }

// serveHTTP terminates HTTP/1.1 or HTTP/2 on an inbound connection and
// decides every request on its own. It returns when the connection is
// done.
//
// HTTP/1 passes through a strict framing gate (package h1) before Go's
// parser, so that a request the gate has not read whole never reaches the
// handler. Each request then has its method checked, its path normalised
// and its headers cleaned before it is authorized; the request forwarded
// is the one authorized, re-framed by the proxy, so the application never
// sees bytes the proxy did not decide on.
//
// pooled is a connection from another proxy's pool (ALPNH2): HTTP/2 only,
// its requests from any of that proxy's application connections, each
// with OrigProtoHeader when its application spoke HTTP/1.1.
func (p *Proxy) serveHTTP(ctx context.Context, conn net.Conn, base *Request, tlsState string, proto sniff.Protocol, appAddr string, pooled bool) {
	var gate *h1.Gate
	if proto == sniff.HTTP1 {
		gate = h1.NewGate(conn, h1.Config{MaxHeadBytes: MaxHeaderBytes})
		conn = gate
	}
	cn := &closeNotifier{Conn: conn, closed: make(chan struct{})}
	rp := &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			// The path and query were normalised into In.URL.
			pr.Out.URL.Scheme, pr.Out.URL.Host = "http", appAddr
			pr.Out.Host = pr.In.Host
			if base.Authenticated {
				pr.Out.Header.Set(PeerIdentityHeader, base.Peer.String())
			}
		},
		ModifyResponse: func(resp *http.Response) error {
			// Only proxies say what a proxy did.
			for _, h := range meshHeaders {
				resp.Header.Del(h)
			}
			keepTrailersOnly(resp)
			if resp.StatusCode == http.StatusSwitchingProtocols {
				// From here on the bytes are not HTTP: one decision (the
				// upgrade request's), and the idle timeout.
				cn.idle.Store(p.watchIdle(cn))
			}
			return nil
		},
		Transport: p.transports,
		// Responses of unknown length (gRPC, streams, chunked) are still
		// flushed at once by ReverseProxy; one of known length goes out
		// in as few writes as it fills (PERF-NOTES: about 19% less CPU).
		FlushInterval: 0,
		BufferPool:    bufferPool{},
		ErrorLog:      log.New(slogWriter{p}, "", 0),
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			p.cfg.Logger.Warn("app unreachable", "direction", "inbound", "port", base.DestinationPort, "err", err)
			sw, _ := w.(*statusWriter)
			if sw == nil {
				w.WriteHeader(http.StatusBadGateway)
				return
			}
			var op *net.OpError
			if errors.As(err, &op) && op.Op == "dial" {
				// Nothing reached the application: the caller's proxy
				// may send the request to another endpoint.
				if pooled {
					sw.Header().Set(notDeliveredHeader, "1")
				}
				proxyError(sw, r, http.StatusServiceUnavailable, grpcUnavailable, "app_unreachable", "")
				return
			}
			proxyError(sw, r, http.StatusBadGateway, grpcUnavailable, "app_failed", "")
		},
	}
	peer := "unauthenticated"
	if base.Authenticated {
		peer = base.Peer.String()
	}
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		if gate != nil && gate.Opaque() {
			// The gate stopped reading requests at an upgrade request:
			// unless the protocol switches (a 101, which hijacks the
			// connection), nothing after it may be read as HTTP.
			w = h1.CloseAfter(w)
		}
		sw := &statusWriter{ResponseWriter: w}
		// Deferred: ReverseProxy aborts a stream whose client went away by
		// panicking with http.ErrAbortHandler, and the request still counts.
		var d Decision
		decided := false
		req := *base
		labels := httpLabels{direction: "inbound", peer: peer, method: methodLabel(r.Method), route: routeInvalid}
		defer func() {
			p.observeHTTP(&labels, sw, r, start)
			if decided {
				p.observe(&req, d, sw.status)
			}
		}()
		// The caller's proxy says what its application spoke; from
		// anyone else the header means nothing.
		origH1 := pooled && r.Header.Get(OrigProtoHeader) == "HTTP/1.1"
		req.Protocol = "http1"
		if r.ProtoMajor == 2 && !origH1 {
			req.Protocol = "http2"
			if isGRPC(r) {
				req.Protocol = "grpc"
			}
		}
		if bad := p.checkRequest(r, gate); bad != nil {
			p.refuseRequest(sw, &req, bad)
			return
		}
		// A route gets a label of its own once a request to it is allowed.
		labels.route = p.routesIn.known(r.URL.RawPath)
		if origH1 {
			// Sent on to the application as the HTTP/1.1 request it was.
			r.Proto, r.ProtoMajor, r.ProtoMinor = "HTTP/1.1", 1, 1
		}
		req.HTTP = &HTTPRequest{Method: r.Method, Path: r.URL.RawPath, Host: r.Host}
		d = p.cfg.Authorizer.Authorize(&req)
		decided = true
		p.countDecision(d, "inbound")
		if !d.Allow {
			p.refuse("inbound", "denied_by_policy", "source", base.Source.String(), "peer", peer, "method", r.Method, "path", req.HTTP.Path, "policy", d.Policy, "rule", d.Rule, "why", d.Reason)
			sw.proxyErr = "denied"
			deny(sw, r, d)
			return
		}
		labels.route = p.routesIn.label(r.URL.RawPath)
		rp.ServeHTTP(sw, r)
	})
	var protos http.Protocols
	protos.SetHTTP1(!pooled)
	protos.SetUnencryptedHTTP2(true)
	p.m.opened.WithLabelValues("inbound", peer, tlsState).Inc()
	p.m.open.WithLabelValues("inbound").Inc()
	p.serveConn(ctx, cn, handler, &protos)
	if gate != nil {
		// Closed and quiesced: the gate's buffer is free for the next.
		gate.Release()
	}
	p.m.open.WithLabelValues("inbound").Dec()
	p.m.closed.WithLabelValues("inbound", peer, tlsState).Inc()
}

// serveConn serves HTTP on one connection until it is done. When the
// proxy starts draining, the server stops gracefully: HTTP/2 sends
// GOAWAY, so a peer's pool stops sending new requests here, and requests
// in progress finish (until the drain timeout closes what is left).
// Requests are not cancelled by the proxy's shutdown.
func (p *Proxy) serveConn(ctx context.Context, cn *closeNotifier, handler http.Handler, protos *http.Protocols) {
	srv := p.newServer(handler, protos)
	srv.BaseContext = func(net.Listener) context.Context { return context.WithoutCancel(ctx) }
	l := &oneConn{c: cn, done: cn.closed}
	stop := make(chan struct{})
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		select {
		case <-p.draining:
			sctx, cancel := context.WithTimeout(context.Background(), p.cfg.DrainTimeout)
			defer cancel()
			_ = srv.Shutdown(sctx)
			_ = cn.Close()
		case <-stop:
		}
	}()
	_ = srv.Serve(l)
	<-cn.closed
	close(stop)
	<-stopped
	// HTTP/2's frame reader may still be returning from its last read.
	cn.quiesce()
}

// newServer is an HTTP server for the connections of applications and
// peers, with the proxy's bounds on what it reads.
func (p *Proxy) newServer(handler http.Handler, protos *http.Protocols) *http.Server {
	return &http.Server{
		Handler:           handler,
		Protocols:         protos,
		ReadHeaderTimeout: p.cfg.DetectTimeout,
		MaxHeaderBytes:    MaxHeaderBytes,
		IdleTimeout:       5 * time.Minute,
		ErrorLog:          log.New(slogWriter{p}, "", 0),
	}
}

// badRequest is why a request is refused with 400: a bounded label for the
// metric and the reason for the client, the log and the audit record.
type badRequest struct{ label, reason string }

// checkRequest refuses what could be read two ways, and rewrites r into
// the one form that is authorized and forwarded: normalised path, no
// variant of mesh's own headers, no h2c upgrade.
func (p *Proxy) checkRequest(r *http.Request, gate *h1.Gate) *badRequest {
	if gate != nil {
		if reason, ok := gate.Rejected(r); ok {
			return &badRequest{"malformed", "malformed request: " + reason}
		}
	}
	if err := normalize.Method(r.Method); err != nil {
		return &badRequest{"method", err.Error()}
	}
	if r.Method == http.MethodConnect {
		return &badRequest{"method", "CONNECT is not served by the mesh's inbound proxy"}
	}
	path, query, err := normalize.Path(r.RequestURI, p.cfg.PathNormalization)
	if err != nil {
		return &badRequest{"path", err.Error()}
	}
	raw, err := url.PathUnescape(path)
	if err != nil {
		return &badRequest{"path", fmt.Sprintf("path %q: %v", path, err)}
	}
	r.URL.Path, r.URL.RawPath, r.URL.RawQuery = raw, path, query
	for _, h := range meshHeaders {
		r.Header.Del(h)
	}
	removed, err := normalize.Headers(r.Header, p.cfg.HeadersWithUnderscores)
	if err != nil {
		return &badRequest{"header", err.Error()}
	}
	if len(removed) > 0 {
		p.m.headersDrop.Add(float64(len(removed)))
	}
	if up := r.Header["Upgrade"]; httpguts.HeaderValuesContainsToken(up, "h2c") {
		if len(up) > 1 || strings.Contains(up[0], ",") {
			return &badRequest{"upgrade", "an upgrade to h2c together with another protocol is not served"}
		}
		// HTTP/2 after an upgrade would carry requests the proxy never
		// sees: answer in HTTP/1.1 instead, as the client must accept.
		r.Header.Del("Upgrade")
		r.Header.Del("Http2-Settings")
		r.Header.Del("Connection")
	}
	return nil
}

// refuseRequest answers 400 with the reason, closes the connection (what
// follows a malformed request cannot be trusted to be framed as the client
// meant), counts and audits it.
func (p *Proxy) refuseRequest(w http.ResponseWriter, req *Request, bad *badRequest) {
	p.refuseRequestFrom(w, "inbound", req.Source, netip.AddrPortFrom(netip.Addr{}, req.DestinationPort), req.Peer, bad)
}

// refuseRequestFrom is refuseRequest for either direction.
func (p *Proxy) refuseRequestFrom(w http.ResponseWriter, dir string, src, dst netip.AddrPort, peer spiffeid.ID, bad *badRequest) {
	if sw, ok := w.(*statusWriter); ok {
		sw.proxyErr = "bad_request"
	}
	p.m.badRequests.WithLabelValues(dir, bad.label).Inc()
	p.refuse(dir, "bad_request", "source", src.String(), "peer", peer.String(), "why", bad.reason)
	p.audit(Refusal{Direction: dir, Reason: "bad_request", Detail: bad.reason, Source: src, Destination: dst, Peer: peer})
	w.Header().Set("Connection", "close")
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(http.StatusBadRequest)
	fmt.Fprintf(w, "mesh: bad request: %s\n", bad.reason)
}

func (p *Proxy) countDecision(d Decision, direction string) {
	decision := "allow"
	if !d.Allow {
		decision = "deny"
	}
	p.m.decisions.WithLabelValues(decision, d.Policy, direction).Inc()
}

func isGRPC(r *http.Request) bool {
	return strings.HasPrefix(r.Header.Get("Content-Type"), "application/grpc")
}

// deny answers a denied request: 403 naming the policy, or for gRPC the
// PERMISSION_DENIED status in a trailers-only response.
func deny(w http.ResponseWriter, r *http.Request, d Decision) {
	msg := fmt.Sprintf("mesh: denied by policy %s", d.Policy)
	if isGRPC(r) {
		w.Header().Set("Content-Type", "application/grpc")
		w.Header().Set("Grpc-Status", "7")
		w.Header().Set("Grpc-Message", url.PathEscape(msg))
		w.WriteHeader(http.StatusOK)
		return
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(http.StatusForbidden)
	fmt.Fprintln(w, msg)
}

// keepTrailersOnly marks a gRPC trailers-only response (its status in the
// headers, no body) as empty, so ReverseProxy does not flush its headers
// apart: HTTP/2 must send them as one HEADERS frame ending the stream, or
// the client reads them as headers, finds no trailers, and fails the call
// ("server closed the stream without sending trailers"). ReverseProxy
// flushes responses of unknown length at once, from a timer that races
// with the end of the handler.
func keepTrailersOnly(resp *http.Response) {
	if resp.Header.Get("Grpc-Status") != "" && strings.HasPrefix(resp.Header.Get("Content-Type"), "application/grpc") && resp.ContentLength < 0 {
		resp.ContentLength = 0
	}
}

// bufferPool lends ReverseProxy the splice buffers, so a request does not
// allocate a 32 KiB copy buffer.
type bufferPool struct{}

func (bufferPool) Get() []byte  { return *copyBufs.Get().(*[]byte) }
func (bufferPool) Put(b []byte) { copyBufs.Put(&b) }

// statusWriter remembers the response status for metrics.
type statusWriter struct {
	http.ResponseWriter
	status int
	// proxyErr is the proxy's own error reason when it answered itself.
	proxyErr string
}

func (s *statusWriter) WriteHeader(code int) {
	if s.status == 0 {
		s.status = code
	}
	s.ResponseWriter.WriteHeader(code)
}

func (s *statusWriter) Write(b []byte) (int, error) {
	if s.status == 0 {
		s.status = http.StatusOK
	}
	return s.ResponseWriter.Write(b)
}

// Unwrap lets http.ResponseController reach Flush and Hijack, which
// streaming and WebSocket upgrades need.
func (s *statusWriter) Unwrap() http.ResponseWriter { return s.ResponseWriter }

func statusClass(code int) string {
	if code < 100 || code > 599 {
		return "none"
	}
	return strconv.Itoa(code/100) + "xx"
}

// methodLabel keeps the metric's cardinality bounded.
func methodLabel(m string) string {
	switch m {
	case http.MethodGet, http.MethodHead, http.MethodPost, http.MethodPut, http.MethodPatch,
		http.MethodDelete, http.MethodConnect, http.MethodOptions, http.MethodTrace:
		return m
	}
	return "other"
}

// slogWriter sends the standard library's HTTP error log to slog.
type slogWriter struct{ p *Proxy }

func (s slogWriter) Write(b []byte) (int, error) {
	s.p.cfg.Logger.Debug("http", "msg", strings.TrimSpace(string(b)))
	return len(b), nil
}
