package proxy

import (
	"context"
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
	return t.h1.RoundTrip(r)
}

// closeNotifier reports when the HTTP server is done with a connection,
// and tracks activity for the idle timeout of an upgraded stream.
type closeNotifier struct {
	net.Conn
	once   sync.Once
	closed chan struct{}
	idle   atomic.Pointer[idleWatch]
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
func (p *Proxy) serveHTTP(ctx context.Context, conn net.Conn, base *Request, tlsState string, proto sniff.Protocol, appAddr string) {
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
			if resp.StatusCode == http.StatusSwitchingProtocols {
				// From here on the bytes are not HTTP: one decision (the
				// upgrade request's), and the idle timeout.
				cn.idle.Store(p.watchIdle(cn))
			}
			return nil
		},
		Transport:     p.transports,
		FlushInterval: -1,
		BufferPool:    bufferPool{},
		ErrorLog:      log.New(slogWriter{p}, "", 0),
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			p.cfg.Logger.Warn("app unreachable", "direction", "inbound", "port", base.DestinationPort, "err", err)
			w.WriteHeader(http.StatusBadGateway)
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
		defer func() {
			p.m.httpRequests.WithLabelValues("inbound", methodLabel(r.Method), statusClass(sw.status)).Inc()
			p.m.httpLatency.WithLabelValues("inbound").Observe(time.Since(start).Seconds())
			if decided {
				p.observe(&req, d, sw.status)
			}
		}()
		req.Protocol = "http1"
		if r.ProtoMajor == 2 {
			req.Protocol = "http2"
			if isGRPC(r) {
				req.Protocol = "grpc"
			}
		}
		if bad := p.checkRequest(r, gate); bad != nil {
			p.refuseRequest(sw, &req, bad)
			return
		}
		req.HTTP = &HTTPRequest{Method: r.Method, Path: r.URL.RawPath, Host: r.Host}
		d = p.cfg.Authorizer.Authorize(&req)
		decided = true
		p.countDecision(d, "inbound")
		if !d.Allow {
			p.refuse("inbound", "denied_by_policy", "source", base.Source.String(), "peer", peer, "method", r.Method, "path", req.HTTP.Path, "policy", d.Policy, "rule", d.Rule, "why", d.Reason)
			deny(sw, r, d)
			return
		}
		rp.ServeHTTP(sw, r)
	})
	var protos http.Protocols
	protos.SetHTTP1(true)
	protos.SetUnencryptedHTTP2(true)
	srv := &http.Server{
		Handler:           handler,
		Protocols:         &protos,
		ReadHeaderTimeout: p.cfg.DetectTimeout,
		MaxHeaderBytes:    MaxHeaderBytes,
		IdleTimeout:       5 * time.Minute,
		ErrorLog:          log.New(slogWriter{p}, "", 0),
		BaseContext:       func(net.Listener) context.Context { return ctx },
	}
	l := &oneConn{c: cn, done: cn.closed}
	p.m.opened.WithLabelValues("inbound", peer, tlsState).Inc()
	p.m.open.WithLabelValues("inbound").Inc()
	_ = srv.Serve(l)
	<-cn.closed
	p.m.open.WithLabelValues("inbound").Dec()
	p.m.closed.WithLabelValues("inbound", peer, tlsState).Inc()
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
	p.m.badRequests.WithLabelValues(bad.label).Inc()
	p.refuse("inbound", "bad_request", "source", req.Source.String(), "peer", req.Peer.String(), "why", bad.reason)
	p.audit(Refusal{Direction: "inbound", Reason: "bad_request", Detail: bad.reason, Source: req.Source,
		Destination: netip.AddrPortFrom(netip.Addr{}, req.DestinationPort), Peer: req.Peer})
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

// bufferPool lends ReverseProxy the splice buffers, so a request does not
// allocate a 32 KiB copy buffer.
type bufferPool struct{}

func (bufferPool) Get() []byte  { return *copyBufs.Get().(*[]byte) }
func (bufferPool) Put(b []byte) { copyBufs.Put(&b) }

// statusWriter remembers the response status for metrics.
type statusWriter struct {
	http.ResponseWriter
	status int
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
