package proxy

import (
	"context"
	"crypto/tls"
	"math/rand/v2"
	"net"
	"slices"
	"strconv"
)

// outbound handles one connection from the local application.
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
	if d.Service {
		// The proxy picks the endpoint itself, so the identity checked
		// is the pod's that the connection lands on.
		if len(d.Endpoints) == 0 {
			p.refuse(dir, "no_endpoints", "destination", addr)
			return
		}
		ep := d.Endpoints[rand.IntN(len(d.Endpoints))]
		dst, addr = ep.Addr, ep.Addr.String()
		d = Destination{Meshed: ep.Meshed, Identity: ep.Identity}
	}
	want, meshed := d.Identity, d.Meshed
	if meshed && want.IsZero() {
		p.refuse(dir, "no_identity", "destination", addr)
		return
	}
	if !meshed && p.cfg.OutboundMode == Strict {
		p.refuse(dir, "not_meshed", "destination", addr)
		return
	}
	up, err := p.cfg.Dial(dctx, "tcp", addr)
	if err != nil {
		p.refuse(dir, "connect_failed", "destination", addr, "err", err)
		return
	}
	defer up.Close()
	if !meshed {
		p.m.opened.WithLabelValues(dir, "-", "plaintext").Inc()
		p.m.open.WithLabelValues(dir).Inc()
		p.splice(dir, app, up)
		p.m.open.WithLabelValues(dir).Dec()
		p.m.closed.WithLabelValues(dir, "-", "plaintext").Inc()
		return
	}
	conn := tls.Client(up, p.clientTLS(want, addr))
	if err := conn.HandshakeContext(dctx); err != nil {
		reason := handshakeReason(err)
		p.m.hsErrors.WithLabelValues(dir, reason).Inc()
		p.refuse(dir, "handshake_failed", "destination", addr, "want", want.String(), "err", err)
		ev := "handshake_failed"
		if reason == "wrong_identity" {
			ev = "wrong_identity"
		}
		p.audit(Refusal{Direction: dir, Reason: ev, Detail: reason + ": " + err.Error(), Source: src, Destination: dst, Peer: want})
		return
	}
	cs := conn.ConnectionState()
	p.m.handshakes.WithLabelValues(dir, tlsVersion(cs.Version), strconv.FormatBool(cs.DidResume)).Inc()
	p.trackPeer(app, false, dst, want)
	peer := want.String()
	p.m.opened.WithLabelValues(dir, peer, "mtls").Inc()
	p.m.open.WithLabelValues(dir).Inc()
	p.splice(dir, app, conn)
	p.m.open.WithLabelValues(dir).Dec()
	p.m.closed.WithLabelValues(dir, peer, "mtls").Inc()
}
