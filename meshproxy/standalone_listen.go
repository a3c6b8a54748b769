package meshproxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
)

// The standalone proxy runs package proxy unchanged, the sidecar's code
// path: one inbound and one outbound listener, and an original
// destination per connection. Without iptables there is nothing to
// recover the original destination from, so sockets stands in for both:
// it opens the configured listeners when the proxy asks for its own, and
// answers OriginalDst from the listener a connection came in on.
const (
	// outboundListeners is the proxy's OutboundAddr: every outbound
	// listener of the file, merged. Its port 0 keeps it out of the
	// proxy's own ports.
	outboundListeners = "standalone-outbound:0"
	// noInbound is the proxy's InboundAddr when the file has no inbound:
	// a listener that never accepts, so no socket is opened.
	noInbound = "standalone-no-inbound:0"
)

// sockets opens the standalone proxy's listeners (proxy.Config.Listen) and
// knows where each one's connections go (proxy.Config.OriginalDst).
type sockets struct {
	cfg *standalone
	lc  net.ListenConfig

	mu     sync.Mutex
	routes []route
}

// route: connections accepted at local are for dst.
type route struct {
	local, dst netip.AddrPort
}

// listen implements proxy.Config.Listen.
func (s *sockets) listen(ctx context.Context, network, addr string) (net.Listener, error) {
	switch {
	case addr == noInbound:
		return newMerged(nil), nil
	case addr == outboundListeners:
		var lns []net.Listener
		for _, o := range s.cfg.outbound {
			ln, err := s.open(ctx, o.listen, o.destination)
			if err != nil {
				for _, l := range lns {
					l.Close()
				}
				return nil, err
			}
			lns = append(lns, ln)
		}
		if len(lns) == 1 {
			// Accepted from directly: merging one listener would only
			// add a goroutine hand-off to every connection.
			return lns[0], nil
		}
		return newMerged(lns), nil
	case s.cfg.inbound != nil && addr == s.cfg.inbound.listen && network == "tcp":
		return s.open(ctx, addr, s.cfg.inbound.forward)
	}
	return s.lc.Listen(ctx, network, addr) // the admin server
}

func (s *sockets) open(ctx context.Context, addr string, dst netip.AddrPort) (net.Listener, error) {
	ln, err := s.lc.Listen(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("standalone: listen %s: %w", addr, err)
	}
	local := unmapped(ln.Addr().(*net.TCPAddr).AddrPort())
	s.mu.Lock()
	s.routes = append(s.routes, route{local, dst})
	s.mu.Unlock()
	return ln, nil
}

// originalDst implements proxy.Config.OriginalDst: the destination of the
// listener tc was accepted on. A listener on an unspecified address
// (0.0.0.0, ::) matches by port.
func (s *sockets) originalDst(tc *net.TCPConn) (netip.AddrPort, error) {
	local := unmapped(tc.LocalAddr().(*net.TCPAddr).AddrPort())
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, r := range s.routes {
		if r.local == local {
			return r.dst, nil
		}
	}
	for _, r := range s.routes {
		if r.local.Addr().IsUnspecified() && r.local.Port() == local.Port() {
			return r.dst, nil
		}
	}
	return netip.AddrPort{}, fmt.Errorf("standalone: no listener at %s", local)
}

// merged accepts from several listeners as one. Each listener has a
// goroutine, owned by merged and ended by Close.
type merged struct {
	lns   []net.Listener
	conns chan accepted
	done  chan struct{}
	once  sync.Once
	wg    sync.WaitGroup
}

type accepted struct {
	c   net.Conn
	err error
}

func newMerged(lns []net.Listener) *merged {
	m := &merged{lns: lns, conns: make(chan accepted), done: make(chan struct{})}
	for _, ln := range lns {
		m.wg.Add(1)
		go m.accept(ln)
	}
	return m
}

// accept hands ln's connections and errors to Accept, one at a time: a
// proxy backing off after an error (EMFILE) holds the next accept too.
func (m *merged) accept(ln net.Listener) {
	defer m.wg.Done()
	for {
		c, err := ln.Accept()
		select {
		case m.conns <- accepted{c, err}:
		case <-m.done:
			if c != nil {
				c.Close()
			}
			return
		}
		if err != nil && errors.Is(err, net.ErrClosed) {
			return
		}
	}
}

// Accept implements net.Listener.
func (m *merged) Accept() (net.Conn, error) {
	select {
	case a := <-m.conns:
		return a.c, a.err
	case <-m.done:
		return nil, net.ErrClosed
	}
}

// Close implements net.Listener: it closes every listener and waits for
// their goroutines.
func (m *merged) Close() error {
	m.once.Do(func() {
		close(m.done)
		for _, ln := range m.lns {
			ln.Close()
		}
		m.wg.Wait()
	})
	return nil
}

// Addr implements net.Listener: the first listener's address, for the
// proxy's log line.
func (m *merged) Addr() net.Addr {
	if len(m.lns) == 0 {
		return &net.TCPAddr{}
	}
	return m.lns[0].Addr()
}
