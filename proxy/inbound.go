package proxy

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
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
	src := tc.RemoteAddr().(*net.TCPAddr).AddrPort()
	dst, err := p.cfg.OriginalDst(tc)
	if err != nil {
		p.refuse(dir, "no_original_destination", "source", src.String(), "err", err)
		return
	}
	req := &Request{Source: netip.AddrPortFrom(src.Addr().Unmap(), src.Port()), DestinationPort: dst.Port(), Protocol: "tcp"}

	_ = tc.SetReadDeadline(time.Now().Add(p.cfg.DetectTimeout))
	br := readers.Get().(*bufio.Reader)
	br.Reset(tc)
	defer func() {
		br.Reset(nil)
		readers.Put(br)
	}()
	proto, first, err := peek(br)
	if err != nil {
		p.refuse(dir, "detect_failed", "source", src.String(), "err", err)
		return
	}
	var client net.Conn = &bufConn{Conn: tc, tc: tc, r: br}
	tlsState := "plaintext"
	probe := false
	switch {
	case proto == sniff.TLS && offersMesh(first):
		conn := tls.Server(client, p.srvTLS)
		hctx, cancel := context.WithTimeout(ctx, p.cfg.ConnectTimeout)
		err := conn.HandshakeContext(hctx)
		cancel()
		if err != nil {
			p.m.hsErrors.WithLabelValues(dir, handshakeReason(err)).Inc()
			p.refuse(dir, "handshake_failed", "source", src.String(), "err", err)
			return
		}
		cs := conn.ConnectionState()
		p.m.handshakes.WithLabelValues(dir, tlsVersion(cs.Version), strconv.FormatBool(cs.DidResume)).Inc()
		// VerifyConnection verified the chain; only the ID is read here.
		id, err := x509svid.IDFromCert(cs.PeerCertificates[0])
		if err != nil {
			p.refuse(dir, "peer_rejected", "source", src.String(), "err", err)
			return
		}
		req.Peer, req.Authenticated = id, true
		client, tlsState = conn, "mtls"
	case p.cfg.InboundMode == Strict:
		if !p.isProbe(req, proto, first) {
			p.refuse(dir, "plaintext_in_strict_mode", "source", src.String(), "port", dst.Port())
			return
		}
		probe = true
	}
	_ = tc.SetReadDeadline(time.Time{})
	if probe {
		p.countDecision(Decision{Allow: true, Policy: "probe"}, dir)
		up, err := p.dialApp(ctx, dst.Port())
		if err != nil {
			return
		}
		defer up.Close()
		p.forwardOneRequest(client, up, first)
		return
	}

	// What the application protocol is: for mTLS, the decrypted stream's
	// first bytes; for plaintext, the bytes already peeked.
	app := proto
	switch {
	case slices.Contains(p.cfg.OpaquePorts, dst.Port()):
		app = sniff.Unknown
	case tlsState == "mtls":
		client, app = p.sniffApp(client)
	}
	if app == sniff.HTTP1 || app == sniff.HTTP2 {
		// HTTP is decided request by request.
		p.serveHTTP(ctx, client, req, tlsState)
		return
	}

	d := p.cfg.Authorizer.Authorize(req)
	p.countDecision(d, dir)
	p.observe(req, d, 0)
	if !d.Allow {
		// Closed right after the handshake: not a byte reaches the app.
		p.refuse(dir, "denied_by_policy", "source", src.String(), "peer", req.Peer.String(), "port", dst.Port(), "policy", d.Policy, "rule", d.Rule, "why", d.Reason)
		return
	}
	up, err := p.dialApp(ctx, dst.Port())
	if err != nil {
		return
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
	p.splice(dir, up, client)
	p.mu.Lock()
	delete(p.tcp, c)
	p.mu.Unlock()
	p.m.open.WithLabelValues(dir).Dec()
	p.m.closed.WithLabelValues(dir, peer, tlsState).Inc()
}

func (p *Proxy) dialApp(ctx context.Context, port uint16) (net.Conn, error) {
	dctx, cancel := context.WithTimeout(ctx, p.cfg.ConnectTimeout)
	defer cancel()
	up, err := p.cfg.Dial(dctx, "tcp", net.JoinHostPort(p.cfg.AppHost, strconv.Itoa(int(port))))
	if err != nil {
		p.refuse("inbound", "app_connect_failed", "port", port, "err", err)
	}
	return up, err
}

// appConn is a decrypted connection whose first bytes were peeked. It is
// not a *tls.Conn, so the HTTP server treats it as the cleartext stream it
// carries.
type appConn struct {
	*tls.Conn
	r *bufio.Reader
}

func (a *appConn) Read(b []byte) (int, error) { return a.r.Read(b) }

// sniffApp waits up to HTTPDetectTimeout for the client's first bytes
// inside the tunnel. Protocols whose server speaks first send nothing: they
// fall back to opaque TCP when the wait ends.
func (p *Proxy) sniffApp(c net.Conn) (net.Conn, sniff.Protocol) {
	tc := c.(*tls.Conn)
	br := bufio.NewReaderSize(tc, 4096)
	_ = tc.SetReadDeadline(time.Now().Add(p.cfg.HTTPDetectTimeout))
	defer tc.SetReadDeadline(time.Time{})
	for n := 1; n <= len(sniff.H2Preface); {
		_, err := br.Peek(n)
		b, _ := br.Peek(br.Buffered())
		proto, derr := sniff.Detect(b)
		if !errors.Is(derr, sniff.ErrMore) {
			return &appConn{Conn: tc, r: br}, proto
		}
		if err != nil {
			break
		}
		n = len(b) + 1
	}
	return &appConn{Conn: tc, r: br}, sniff.Unknown
}

// peek reads until the first bytes are classified, within the read
// deadline already set and sniffBytes.
func peek(br *bufio.Reader) (sniff.Protocol, []byte, error) {
	n := 1
	for {
		b, err := br.Peek(n)
		if err != nil && len(b) == 0 {
			return sniff.Unknown, nil, err
		}
		b, _ = br.Peek(br.Buffered())
		proto, derr := sniff.Detect(b)
		if derr == nil {
			switch proto {
			case sniff.TLS:
				_, aerr := sniff.ClientHelloALPN(b)
				if !errors.Is(aerr, sniff.ErrMore) {
					return proto, b, nil
				}
			case sniff.HTTP1:
				_, herr := sniff.ParseRequestHead(b)
				if !errors.Is(herr, sniff.ErrMore) {
					return proto, b, nil
				}
			default:
				return proto, b, nil
			}
		}
		if err != nil {
			// EOF or deadline with a partial prefix: opaque.
			return sniff.Unknown, b, nil
		}
		if len(b) >= sniffBytes {
			return proto, b, nil
		}
		n = len(b) + 1
	}
}

func offersMesh(hello []byte) bool {
	protos, err := sniff.ClientHelloALPN(hello)
	return err == nil && slices.Contains(protos, ALPN)
}

// isProbe allows a plaintext kubelet probe in strict mode: an HTTP GET from
// a node address to a configured probe port and path.
func (p *Proxy) isProbe(req *Request, proto sniff.Protocol, first []byte) bool {
	if proto != sniff.HTTP1 || !slices.Contains(p.cfg.ProbeSources, req.Source.Addr()) {
		return false
	}
	h, err := sniff.ParseRequestHead(first)
	if err != nil || h.Method != "GET" {
		return false
	}
	for _, pr := range p.cfg.Probes {
		if pr.Port == req.DestinationPort && pr.Path == h.Path {
			return true
		}
	}
	return false
}

// forwardOneRequest passes exactly one request head (a probe: GET, no body)
// to the app and its response back; anything more the client sends is not
// forwarded.
func (p *Proxy) forwardOneRequest(client, up net.Conn, first []byte) {
	h, err := sniff.ParseRequestHead(first)
	if err != nil {
		return
	}
	head := make([]byte, h.Len)
	if _, err := io.ReadFull(client, head); err != nil {
		return
	}
	if _, err := up.Write(head); err != nil {
		return
	}
	n, _ := io.Copy(client, up)
	p.m.bytes.WithLabelValues("inbound", "from_app").Add(float64(n))
	p.m.bytes.WithLabelValues("inbound", "to_app").Add(float64(len(head)))
}

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
