package proxy

import (
	"context"
	"net"
	"net/netip"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// peerConn is an open mTLS connection and whom it is with: for outbound,
// the pod dialled and the identity required of it; for inbound, the
// caller's address and the identity it presented.
type peerConn struct {
	inbound bool
	addr    netip.AddrPort
	id      spiffeid.ID
	// known: the destinations named addr a meshed pod of identity id when
	// last looked at. Only then does a change of what is at addr revoke
	// the connection: a caller that is not a pod the mesh knows (a VM in
	// standalone mode, a pod the controller has not seen yet) is judged
	// by policy alone.
	known bool
}

// peek looks addr up without waiting: before the destinations are known
// it gives an error, and nothing is decided from it. One context, already
// done, serves every peek: none is made per connection.
func (p *Proxy) peek(addr netip.AddrPort) (Destination, error) {
	return p.cfg.Destinations.Lookup(done, addr)
}

var done = func() context.Context {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	return ctx
}()

// trackPeer records an open mTLS connection (keyed by the accepted
// connection, which untrack removes) for revocation.
func (p *Proxy) trackPeer(c net.Conn, inbound bool, addr netip.AddrPort, id spiffeid.ID) {
	// Outbound, the proxy dialled addr because the destinations said id
	// runs there; inbound, the caller is known if they say so now.
	pc := &peerConn{inbound: inbound, addr: addr, id: id, known: !inbound}
	if inbound {
		if d, err := p.peek(addr); err == nil {
			pc.known = isPod(d, id)
		}
	}
	p.mu.Lock()
	if _, open := p.conns[c]; open {
		p.peers[c] = pc
	}
	p.mu.Unlock()
}

func isPod(d Destination, id spiffeid.ID) bool {
	return d.Meshed && !d.Service && d.Identity == id
}

// watchDestinations closes open connections that the destinations now
// refuse: to or from a pod that was deleted, or whose address now belongs
// to another identity. Already-open connections are revoked as surely as
// new ones are refused.
func (p *Proxy) watchDestinations(ctx context.Context, n Notifier) error {
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-n.Updated():
		}
		p.mu.Lock()
		open := make(map[net.Conn]*peerConn, len(p.peers))
		for c, pc := range p.peers {
			open[c] = pc
		}
		p.mu.Unlock()
		for c, pc := range open {
			d, err := p.peek(pc.addr)
			if err != nil {
				continue
			}
			still := isPod(d, pc.id)
			if still || !pc.known {
				if still && !pc.known {
					p.mu.Lock()
					pc.known = true
					p.mu.Unlock()
				}
				continue
			}
			dir, reason := "outbound", "destination_revoked"
			if pc.inbound {
				dir, reason = "inbound", "peer_revoked"
			}
			p.m.revoked.WithLabelValues(dir).Inc()
			p.refuse(dir, reason, "address", pc.addr.String(), "peer", pc.id.String())
			r := Refusal{Direction: dir, Reason: reason, Detail: "the mesh no longer has a pod of this identity at this address", Peer: pc.id}
			if pc.inbound {
				r.Source = pc.addr
			} else {
				r.Destination = pc.addr
			}
			p.audit(r)
			c.Close()
		}
	}
}

// trackPooled records a pooled connection for revocation, like an
// outbound one. It reports false once the proxy has closed its
// connections for good.
func (p *Proxy) trackPooled(c net.Conn, addr netip.AddrPort, id spiffeid.ID) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.conns == nil {
		return false
	}
	p.peers[c] = &peerConn{addr: addr, id: id, known: true}
	return true
}

func (p *Proxy) untrackPooled(c net.Conn) {
	p.mu.Lock()
	delete(p.peers, c)
	p.mu.Unlock()
}
