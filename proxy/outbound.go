package proxy

import (
	"bufio"
	"bytes"
	"context"
	"net"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/mesh-dev/mesh/proxy/sniff"
)

// outbound handles one connection from the local application.
//
// To a meshed pod or a Service, the proxy reads the application's first
// bytes (unless the port is declared opaque): HTTP/1.1 and HTTP/2 are
// served request by request (outhttp.go), each request balanced over the
// Service's endpoints and sent over pooled mTLS connections; anything else
// is one opaque mTLS stream to one endpoint, picked per connection.
func (p *Proxy) outbound(ctx context.Context, app net.Conn) {
	const dir = "outbound"
	tc, ok := app.(*net.TCPConn)
	if !ok {
		return
	}
	dst, err := p.cfg.OriginalDst(tc)
	if err != nil {
		p.refuse(dir, "no_original_destination", "err", err)
		return
	}
	dst = unmap(dst)
	src := unmap(tc.RemoteAddr().(*net.TCPAddr).AddrPort())
	addr := dst.String()
	// A connection made to the outbound port itself, not redirected to it,
	// has itself as original destination: dialling it would loop.
	if local := unmap(tc.LocalAddr().(*net.TCPAddr).AddrPort()); dst == local || (slices.Contains(p.ownPorts, dst.Port()) && (dst.Addr().IsLoopback() || dst.Addr() == local.Addr())) {
		p.refuse(dir, "loop", "destination", addr)
		p.audit(Refusal{Direction: dir, Reason: "loop", Detail: "a connection to the proxy's own port", Source: src, Destination: dst})
		return
	}
	dctx, cancel := context.WithTimeout(ctx, p.cfg.ConnectTimeout)
	defer cancel()
	// Until the destinations are known this waits (bounded by the connect
	// timeout); no answer refuses the connection rather than guess that
	// the destination is outside the mesh.
	d, err := p.cfg.Destinations.Lookup(dctx, dst)
	if err != nil {
		p.refuse(dir, "destination_unknown", "destination", addr, "err", err)
		p.audit(Refusal{Direction: dir, Reason: "destination_unknown", Detail: err.Error(), Source: src, Destination: dst})
		return
	}
	if !d.Service && !d.Meshed {
		// Outside the mesh: passed as it is, in permissive mode only.
		if p.cfg.OutboundMode == Strict {
			p.refuse(dir, "not_meshed", "destination", addr)
			return
		}
		up, err := p.cfg.Dial(dctx, "tcp", addr)
		if err != nil {
			p.refuse(dir, "connect_failed", "destination", addr, "err", err)
			return
		}
		defer up.Close()
		p.m.opened.WithLabelValues(dir, "-", "plaintext").Inc()
		p.m.open.WithLabelValues(dir).Inc()
		p.splice(dir, "-", app, up)
		p.m.open.WithLabelValues(dir).Dec()
		p.m.closed.WithLabelValues(dir, "-", "plaintext").Inc()
		return
	}
	if !d.Service && d.Identity.IsZero() {
		p.refuse(dir, "no_identity", "destination", addr)
		return
	}

	br := appReaders.Get().(*bufio.Reader)
	br.Reset(tc)
	defer func() {
		// Nothing reads the connection any more: the HTTP side returns
		// once its reads are quiesced, the opaque side once both copies
		// are done.
		br.Reset(nil)
		appReaders.Put(br)
	}()
	ac := &appConn{Conn: tc, r: br}
	proto, reason := p.outboundProtocol(ac, d, dst)
	if reason != "" {
		p.refuse(dir, reason, "destination", addr)
		return
	}
	if isSniffHTTP(proto) {
		cancel()
		p.serveOutboundHTTP(ac, src, dst, proto)
		return
	}
	p.outboundOpaque(dctx, ac, src, dst, d)
}

// appReaders hold what an application connection sent first, for
// classify, and buffer its reads after: one per connection, reused by the
// next, so a short connection does not allocate 4 KiB for it.
var appReaders = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, 4096) }}

// outboundProtocol decides whether the application speaks HTTP on a
// connection to d: never for a port declared opaque; must for one declared
// HTTP or gRPC (anything else is refused, with reason); otherwise as its
// first bytes say. An application that sends nothing for ServerFirstWait
// is taken to wait for its server (MySQL, SMTP): opaque. The server side
// decides again from what it receives, so this choice never weakens what
// its policy enforces; it only decides whether requests are balanced one
// by one.
func (p *Proxy) outboundProtocol(ac *appConn, d Destination, dst netip.AddrPort) (proto sniff.Protocol, reason string) {
	declared := d.Protocol
	if !d.Service && slices.Contains(d.OpaquePorts, dst.Port()) {
		declared = ProtocolOpaque
	}
	if declared == ProtocolOpaque {
		return sniff.Unknown, ""
	}
	mustHTTP := declared == ProtocolHTTP || declared == ProtocolGRPC
	wait := p.cfg.ServerFirstWait
	if mustHTTP {
		wait = p.cfg.DetectTimeout
	}
	proto, n, err := classify(ac, time.Now().Add(wait))
	if err != nil && n > 0 && isTimeout(err) {
		// Part of what may be a request line: give it the full time.
		proto, n, err = classify(ac, time.Now().Add(p.cfg.DetectTimeout))
	}
	switch {
	case err != nil && mustHTTP:
		if n == 0 {
			return sniff.Unknown, "no_request"
		}
		return sniff.Unknown, "incomplete_request"
	case err != nil:
		// Silent (server first) or cut short: the bytes go on as they
		// are, and the server side decides.
		return sniff.Unknown, ""
	case proto == sniff.Unknown && mustHTTP:
		return sniff.Unknown, "not_http"
	case proto == sniff.HTTP1:
		b, _ := ac.r.Peek(ac.r.Buffered())
		if bytes.HasPrefix(b, []byte("CONNECT ")) {
			// A tunnel to an HTTP proxy: its bytes after the request are
			// not HTTP. The server side refuses it where HTTP is required.
			return sniff.Unknown, ""
		}
	}
	return proto, ""
}

// outboundOpaque carries one application connection as one mTLS (or, to
// an endpoint outside the mesh in permissive mode, plaintext) stream to
// one endpoint, picked per connection; an endpoint that cannot be reached
// is skipped for the next.
func (p *Proxy) outboundOpaque(ctx context.Context, ac *appConn, src, dst netip.AddrPort, d Destination) {
	const dir = "outbound"
	eps := endpointsOf(d, dst)
	if p.cfg.OutboundMode == Strict {
		eps = slices.DeleteFunc(slices.Clone(eps), func(ep Endpoint) bool { return !ep.Meshed })
	}
	if len(eps) == 0 {
		p.refuse(dir, "no_endpoints", "destination", dst.String())
		return
	}
	var tried []endpointKey
	for range maxAttempts {
		ep, st, ok := p.bal.pick(eps, func(ep Endpoint) bool { return slices.Contains(tried, keyOf(ep)) })
		if !ok {
			break
		}
		t := &target{key: keyOf(ep), connectTimeout: d.ConnectTimeout, src: src}
		var up net.Conn
		var err error
		if ep.Meshed {
			up, err = p.dialMesh(ctx, t, ALPN)
		} else {
			up, err = p.cfg.Dial(ctx, "tcp", ep.Addr.String())
		}
		if err != nil {
			st.failed(time.Now())
			tried = append(tried, keyOf(ep))
			p.refuse(dir, "connect_failed", "destination", ep.Addr.String(), "err", err)
			continue
		}
		st.succeeded()
		st.pending.Add(1)
		peer, tlsState := "-", "plaintext"
		if ep.Meshed {
			peer, tlsState = ep.Identity.String(), "mtls"
			p.trackPeer(ac.Conn, false, ep.Addr, ep.Identity)
		}
		p.m.opened.WithLabelValues(dir, peer, tlsState).Inc()
		p.m.open.WithLabelValues(dir).Inc()
		p.splice(dir, peer, ac, up)
		up.Close()
		p.m.open.WithLabelValues(dir).Dec()
		p.m.closed.WithLabelValues(dir, peer, tlsState).Inc()
		st.pending.Add(-1)
		return
	}
}
