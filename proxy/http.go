package proxy

import (
	"context"
	"fmt"
	"log"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"
)

// PeerIdentityHeader carries the client's verified SPIFFE ID to the
// application. Whatever the client sent under this name is removed first.
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

// closeNotifier reports when the HTTP server is done with a connection.
type closeNotifier struct {
	net.Conn
	once   sync.Once
	closed chan struct{}
}

func (c *closeNotifier) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() { close(c.closed) })
	return err
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
func (p *Proxy) serveHTTP(ctx context.Context, conn net.Conn, base *Request, tlsState string) {
	cn := &closeNotifier{Conn: conn, closed: make(chan struct{})}
	target := &url.URL{Scheme: "http", Host: net.JoinHostPort(p.cfg.AppHost, strconv.Itoa(int(base.DestinationPort)))}
	rp := &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(target)
			pr.Out.Host = pr.In.Host
			pr.Out.Header.Del(PeerIdentityHeader)
			if base.Authenticated {
				pr.Out.Header.Set(PeerIdentityHeader, base.Peer.String())
			}
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
		sw := &statusWriter{ResponseWriter: w}
		// Deferred: ReverseProxy aborts a stream whose client went away by
		// panicking with http.ErrAbortHandler, and the request still counts.
		var d Decision
		req := *base
		defer func() {
			p.m.httpRequests.WithLabelValues("inbound", methodLabel(r.Method), statusClass(sw.status)).Inc()
			p.m.httpLatency.WithLabelValues("inbound").Observe(time.Since(start).Seconds())
			p.observe(&req, d, sw.status)
		}()
		req.Protocol = "http1"
		if r.ProtoMajor == 2 {
			req.Protocol = "http2"
			if isGRPC(r) {
				req.Protocol = "grpc"
			}
		}
		req.HTTP = &HTTPRequest{Method: r.Method, Path: r.URL.Path, Host: r.Host}
		d = p.cfg.Authorizer.Authorize(&req)
		p.countDecision(d, "inbound")
		if !d.Allow {
			p.refuse("inbound", "denied_by_policy", "source", base.Source.String(), "peer", peer, "method", r.Method, "path", r.URL.Path, "policy", d.Policy, "rule", d.Rule, "why", d.Reason)
			deny(sw, r, d)
		} else {
			rp.ServeHTTP(sw, r)
		}
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
