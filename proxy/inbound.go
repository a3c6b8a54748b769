package proxy

import (
	"bufio"
	"cmp"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/mesh-dev/mesh/proxy/sniff"
)

// sniffBytes bounds what the inbound side reads before deciding: a whole
// TLS record (a ClientHello with a post-quantum key share is over 1 KiB) or
// an HTTP request head.
const sniffBytes = 5 + 1<<14 + 256

// readers are the inbound side's sniffing buffers, reused across
// connections.
var readers = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, sniffBytes) }}

// bufConn is a connection whose first bytes were peeked into r. It embeds
// the net.Conn interface, not *net.TCPConn, so that io.Copy cannot use
// TCPConn.WriteTo and skip the peeked bytes.
type bufConn struct {
	net.Conn
	tc *net.TCPConn
	r  *bufio.Reader
}

func (b *bufConn) Read(p []byte) (int, error) { return b.r.Read(p) }
func (b *bufConn) CloseWrite() error          { return b.tc.CloseWrite() }

// inbound handles one connection to the local application.
func (p *Proxy) inbound(ctx context.Context, c net.Conn) {
	const dir = "inbound"
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return
	}
	src := unmap(tc.RemoteAddr().(*net.TCPAddr).AddrPort())
	local := tc.LocalAddr().(*net.TCPAddr)
	dst, err := p.cfg.OriginalDst(tc)
	if err != nil {
		p.refuse(dir, "no_original_destination", "source", src.String(), "err", err)
		return
	}
	dst = unmap(dst)
	req := &Request{Source: src, DestinationPort: dst.Port(), Protocol: "tcp"}
	refuse := func(reason, detail string, attrs ...any) {
		p.refuse(dir, reason, append([]any{"source", src.String(), "port", dst.Port(), "detail", detail}, attrs...)...)
		p.audit(Refusal{Direction: dir, Reason: reason, Detail: detail, Source: src, Destination: dst, Peer: req.Peer})
	}
	appAddr, reason := p.appAddr(local, dst)
	if reason != "" {
		refuse(reason, "original destination "+dst.String())
		return
	}

	br := readers.Get().(*bufio.Reader)
	br.Reset(tc)
	defer func() {
		br.Reset(nil)
		readers.Put(br)
	}()
	_ = tc.SetReadDeadline(time.Now().Add(p.cfg.DetectTimeout))
	first, err := peekHello(br)
	_ = tc.SetReadDeadline(time.Time{})
	if err != nil && (len(first) > 0 || p.cfg.InboundMode == Strict) {
		refuse("detect_failed", err.Error())
		return
	}
	var client net.Conn = &bufConn{Conn: tc, tc: tc, r: br}
	tlsState := "plaintext"
	switch {
	case offersMesh(first):
		conn := tls.Server(client, p.srvTLS)
		hctx, cancel := context.WithTimeout(ctx, p.cfg.ConnectTimeout)
		err := conn.HandshakeContext(hctx)
		cancel()
		if err != nil {
			reason := handshakeReason(err)
			p.m.hsErrors.WithLabelValues(dir, reason).Inc()
			refuse("handshake_failed", reason+": "+err.Error())
			return
		}
		cs := conn.ConnectionState()
		p.m.handshakes.WithLabelValues(dir, tlsVersion(cs.Version), strconv.FormatBool(cs.DidResume)).Inc()
		// VerifyConnection verified the chain; only the ID is read here.
		id, err := x509svid.IDFromCert(cs.PeerCertificates[0])
		if err != nil {
			refuse("peer_rejected", err.Error())
			return
		}
		req.Peer, req.Authenticated = id, true
		client, tlsState = conn, "mtls"
		p.trackPeer(c, true, src, id)
		if cs.NegotiatedProtocol == ALPNH2 {
			// Another proxy's pool: HTTP/2, no detection needed. Its
			// frames are written coalesced (coalesce.go).
			ac := &appConn{Conn: newCoalescer(conn), r: bufio.NewReaderSize(conn, 4096)}
			p.serveHTTP(ctx, ac, req, tlsState, sniff.HTTP2, appAddr, true)
			return
		}
	case p.cfg.InboundMode == Strict:
		// No plaintext exception, not even for kubelet probes: they are
		// rewritten to the admin port's /app-health/ (package probe).
		refuse("plaintext_in_strict_mode", "")
		return
	}

	// What the application protocol is: declared, or read from the
	// client's first bytes, never decided by a timeout alone.
	ac, app, up, reason, detail := p.appProtocol(ctx, client, dst.Port(), appAddr)
	if reason != "" {
		refuse(reason, detail, "peer", req.Peer.String())
		return
	}
	if app == sniff.HTTP1 || app == sniff.HTTP2 {
		// HTTP is decided request by request.
		p.serveHTTP(ctx, ac, req, tlsState, app, appAddr, false)
		return
	}

	d := p.cfg.Authorizer.Authorize(req)
	p.countDecision(d, dir)
	p.observe(req, d, 0)
	if !d.Allow {
		// Closed right after the handshake: not a byte reaches the app.
		if up != nil {
			up.Close()
		}
		p.refuse(dir, "denied_by_policy", "source", src.String(), "peer", req.Peer.String(), "port", dst.Port(), "policy", d.Policy, "rule", d.Rule, "why", d.Reason)
		return
	}
	if up == nil {
		if up, err = p.dialApp(ctx, appAddr); err != nil {
			return
		}
	}
	defer up.Close()
	peer := "unauthenticated"
	if req.Authenticated {
		peer = req.Peer.String()
	}
	p.m.opened.WithLabelValues(dir, peer, tlsState).Inc()
	p.m.open.WithLabelValues(dir).Inc()
	p.mu.Lock()
	p.tcp[c] = req
	p.mu.Unlock()
	p.splice(dir, peer, up, ac)
	p.mu.Lock()
	delete(p.tcp, c)
	p.mu.Unlock()
	p.m.open.WithLabelValues(dir).Dec()
	p.m.closed.WithLabelValues(dir, peer, tlsState).Inc()
}

func unmap(a netip.AddrPort) netip.AddrPort { return netip.AddrPortFrom(a.Addr().Unmap(), a.Port()) }

// appAddr is where an inbound connection is delivered: the original
// destination, which must be this pod's own address (the one the
// connection arrived on) and not one of the proxy's own ports. A
// connection to a proxy port would be dialled again into the proxy, in a
// loop; one to another address was sent to this pod's interface by a
// neighbour and must not make the proxy dial it.
func (p *Proxy) appAddr(local *net.TCPAddr, dst netip.AddrPort) (string, string) {
	if slices.Contains(p.ownPorts, dst.Port()) {
		return "", "loop"
	}
	port := strconv.Itoa(int(dst.Port()))
	if p.cfg.AppHost != "" {
		return net.JoinHostPort(p.cfg.AppHost, port), ""
	}
	la, _ := netip.AddrFromSlice(local.IP)
	if la.Unmap() != dst.Addr().WithZone("") {
		return "", "not_local_destination"
	}
	// A link-local destination needs its interface to be dialled.
	host := dst.Addr().WithZone("").String()
	if zone := cmp.Or(dst.Addr().Zone(), local.Zone); zone != "" && dst.Addr().Is6() {
		host += "%" + zone
	}
	return net.JoinHostPort(host, port), ""
}

func (p *Proxy) dialApp(ctx context.Context, addr string) (net.Conn, error) {
	dctx, cancel := context.WithTimeout(ctx, p.cfg.ConnectTimeout)
	defer cancel()
	up, err := p.cfg.Dial(dctx, "tcp", addr)
	if err != nil {
		p.refuse("inbound", "app_connect_failed", "address", addr, "err", err)
	}
	return up, err
}

// appConn is an accepted connection (decrypted, for mTLS) whose first bytes
// were read into r. It is not a *tls.Conn, so the HTTP server treats it as
// the cleartext stream it carries.
type appConn struct {
	net.Conn
	r *bufio.Reader
}

func (a *appConn) Read(b []byte) (int, error) { return a.r.Read(b) }

// CloseWrite passes a half-close on, for opaque TCP.
func (a *appConn) CloseWrite() error {
	if hc, ok := a.Conn.(halfCloser); ok {
		return hc.CloseWrite()
	}
	return a.Conn.Close()
}

// prefixConn is an application connection whose first bytes were already
// read, by the check for a protocol whose server speaks first.
//
// It embeds the net.Conn interface, not *net.TCPConn, so that io.Copy
// cannot use TCPConn.WriteTo and skip the prefix.
type prefixConn struct {
	net.Conn
	tc     *net.TCPConn
	prefix []byte
}

func (c *prefixConn) Read(b []byte) (int, error) {
	if len(c.prefix) > 0 {
		n := copy(b, c.prefix)
		c.prefix = c.prefix[n:]
		return n, nil
	}
	return c.tc.Read(b)
}

func (c *prefixConn) CloseWrite() error { return c.tc.CloseWrite() }

// appProtocol tells what the client speaks on port: HTTP1 or HTTP2, whose
// requests are then each decided, or Unknown for opaque TCP. Declarations
// come first. On a port that must be HTTP (declared, or read by some
// policy's HTTP fields) anything else is refused, never passed as opaque.
// Elsewhere, bytes that cannot be HTTP are opaque; a client that sends
// nothing is waited for until the application speaks first (opaque, with
// the connection to it returned in up) or the client does.
//
// A refusal returns its reason and detail.
func (p *Proxy) appProtocol(ctx context.Context, c net.Conn, port uint16, appAddr string) (ac *appConn, proto sniff.Protocol, up net.Conn, reason, detail string) {
	ac = &appConn{Conn: c, r: bufio.NewReaderSize(c, 4096)}
	declared := p.cfg.PortProtocols[port]
	if declared == ProtocolOpaque {
		return ac, sniff.Unknown, nil, "", ""
	}
	mustHTTP := declared == ProtocolHTTP || declared == ProtocolGRPC
	if hp, ok := p.cfg.Authorizer.(HTTPPolicy); ok && hp.RequiresHTTP(port) {
		mustHTTP = true
	}
	wait := p.cfg.ServerFirstWait
	if mustHTTP {
		wait = p.cfg.DetectTimeout
	}
	proto, n, err := classify(ac, time.Now().Add(wait))
	if err != nil && n == 0 && !mustHTTP && isTimeout(err) {
		// The client is silent: does the application speak first?
		var appFirst bool
		var h2 bool
		if up, appFirst, h2, err = p.raceFirstBytes(ctx, ac, appAddr); err != nil {
			reason := "no_request"
			if errors.Is(err, errAppConnect) {
				reason = "app_connect_failed"
			}
			return ac, 0, nil, reason, err.Error()
		}
		if appFirst {
			return ac, sniff.Unknown, up, "", ""
		}
		if up != nil {
			up.Close()
			up = nil
		}
		// An HTTP/2 server (gRPC's does) speaks first too, with its
		// SETTINGS: the port is HTTP, and a slow client must not turn it
		// opaque.
		mustHTTP = mustHTTP || h2
		proto, n, err = classify(ac, time.Now().Add(p.cfg.DetectTimeout))
	} else if err != nil && n > 0 && !mustHTTP && isTimeout(err) {
		// Part of what may be a request line: give it the full time.
		proto, n, err = classify(ac, time.Now().Add(p.cfg.DetectTimeout))
	}
	switch {
	case err != nil && n == 0:
		return ac, 0, nil, "no_request", fmt.Sprintf("nothing received: %v", err)
	case err != nil:
		// Bytes that could still become an HTTP request line, cut off:
		// never passed on undecided.
		return ac, 0, nil, "incomplete_request", fmt.Sprintf("%d bytes that may start an HTTP request, then %v", n, err)
	case proto == sniff.Unknown && mustHTTP:
		return ac, 0, nil, "not_http", fmt.Sprintf("port %d must be HTTP (declared %q or read by policy) but the client's first bytes are not", port, declared)
	}
	return ac, proto, nil, "", ""
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// classify reads from ac until sniff.App decides or deadline passes, and
// returns what it decided and how many bytes it saw. The bytes stay
// buffered in ac. An error with sniff.ErrMore's meaning is returned as the
// read error that cut the bytes short.
func classify(ac *appConn, deadline time.Time) (sniff.Protocol, int, error) {
	_ = ac.Conn.SetReadDeadline(deadline)
	defer ac.Conn.SetReadDeadline(time.Time{})
	for n := 1; ; {
		_, err := ac.r.Peek(n)
		b, _ := ac.r.Peek(ac.r.Buffered())
		proto, derr := sniff.App(b)
		if derr == nil {
			return proto, len(b), nil
		}
		if err != nil {
			if errors.Is(err, io.EOF) && len(b) > 0 {
				// The client sent these bytes and closed its side: they
				// are the whole stream, and not an HTTP request.
				return sniff.Unknown, len(b), nil
			}
			return sniff.Unknown, len(b), err
		}
		n = len(b) + 1
	}
}

// raceFirstBytes connects to the application and waits for whichever side
// sends first, up to IdleTimeout. If the application does, it is a
// protocol whose server speaks first, and its bytes are kept in up.
//
// An application that speaks first with an HTTP/2 SETTINGS frame is an
// HTTP/2 server: then h2 is set, up is nil and the client is to be read as
// HTTP.
func (p *Proxy) raceFirstBytes(ctx context.Context, ac *appConn, appAddr string) (up net.Conn, appFirst, h2 bool, err error) {
	conn, err := p.dialApp(ctx, appAddr)
	if err != nil {
		return nil, false, false, fmt.Errorf("%w: %w", errAppConnect, err)
	}
	tc, ok := conn.(*net.TCPConn)
	if !ok {
		conn.Close()
		return nil, false, false, fmt.Errorf("application connection is a %T, not TCP", conn)
	}
	deadline := time.Now().Add(p.cfg.IdleTimeout)
	_ = tc.SetReadDeadline(deadline)
	_ = ac.Conn.SetReadDeadline(deadline)
	type result struct {
		app bool
		n   int
		err error
	}
	results := make(chan result, 2)
	buf := make([]byte, 4096)
	go func() {
		n, err := tc.Read(buf)
		results <- result{app: true, n: n, err: err}
	}()
	go func() {
		_, err := ac.r.Peek(1)
		results <- result{err: err}
	}()
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		select {
		case <-ctx.Done():
			_ = tc.SetReadDeadline(time.Now())
			_ = ac.Conn.SetReadDeadline(time.Now())
		case <-stop:
		}
	}()
	first := <-results
	past := time.Now()
	_ = tc.SetReadDeadline(past)
	_ = ac.Conn.SetReadDeadline(past)
	second := <-results
	_ = tc.SetReadDeadline(time.Time{})
	_ = ac.Conn.SetReadDeadline(time.Time{})
	appRes := first
	if !first.app {
		appRes = second
	}
	if appRes.n > 0 {
		if isH2Settings(buf[:appRes.n]) {
			tc.Close()
			return nil, false, true, nil
		}
		// The application spoke: opaque, its bytes first.
		return &prefixConn{Conn: tc, tc: tc, prefix: buf[:appRes.n]}, true, false, nil
	}
	clientRes := second
	if !first.app {
		clientRes = first
	}
	if clientRes.err != nil && !isTimeout(clientRes.err) {
		tc.Close()
		return nil, false, false, fmt.Errorf("client: %w", clientRes.err)
	}
	if appRes.err != nil && !isTimeout(appRes.err) {
		// The application closed without a word: nothing to serve.
		tc.Close()
		return nil, false, false, fmt.Errorf("application: %w", appRes.err)
	}
	if clientRes.err != nil {
		tc.Close()
		return nil, false, false, fmt.Errorf("neither side spoke within %s", p.cfg.IdleTimeout)
	}
	return tc, false, false, nil
}

// isH2Settings reports whether b starts with an HTTP/2 SETTINGS frame on
// stream 0: the server connection preface.
func isH2Settings(b []byte) bool {
	if len(b) < 9 {
		return false
	}
	length := int(b[0])<<16 | int(b[1])<<8 | int(b[2])
	return b[3] == 0x4 && b[5]&0x7f == 0 && b[6] == 0 && b[7] == 0 && b[8] == 0 && length%6 == 0
}

// peekHello reads until the first bytes are a whole TLS ClientHello or
// cannot be one, within the read deadline already set and sniffBytes. It
// returns the bytes seen; with none and an error, the client sent nothing
// in time.
func peekHello(br *bufio.Reader) ([]byte, error) {
	for n := 1; ; {
		_, err := br.Peek(n)
		b, _ := br.Peek(br.Buffered())
		if len(b) > 0 {
			if _, aerr := sniff.ClientHelloALPN(b); !errors.Is(aerr, sniff.ErrMore) {
				return b, nil
			}
		}
		if err != nil || len(b) >= sniffBytes {
			return b, err
		}
		n = len(b) + 1
	}
}

func offersMesh(hello []byte) bool {
	protos, err := sniff.ClientHelloALPN(hello)
	return err == nil && (slices.Contains(protos, ALPN) || slices.Contains(protos, ALPNH2))
}

// errAppConnect marks a failure to reach the application.
var errAppConnect = errors.New("cannot connect to the application")

// Handshake failure reasons, for metrics.
var (
	errWrongIdentity = errors.New("wrong peer identity")
)

func handshakeReason(err error) string {
	var verr *tls.CertificateVerificationError
	var ne net.Error
	switch {
	case errors.Is(err, errWrongIdentity):
		return "wrong_identity"
	case errors.As(err, &verr):
		return "untrusted_certificate"
	case errors.As(err, &ne) && ne.Timeout(), errors.Is(err, context.DeadlineExceeded):
		return "timeout"
	case errors.Is(err, io.EOF):
		return "eof"
	}
	var ae tls.AlertError
	if errors.As(err, &ae) {
		return "alert"
	}
	return "other"
}
