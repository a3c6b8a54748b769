package proxy

import (
	"net"
	"net/http"
	"sync"
)

// connServer is one http.Server for many connections, each handed to it by
// the goroutine that accepted it. A new application connection then costs
// net/http's per-connection work only: not a server of its own (its HTTP/2
// set-up, listener tracking, error logger) and a goroutine to watch it,
// which on the outbound side was most of what a short connection cost
// beyond the kernel's accept and close (docs/benchmarks.md, issue 14).
//
// Per-connection data reaches the handler through srv.ConnContext, from the
// connection handed over.
//
// The goroutine that hands a connection over keeps owning it: serve
// returns only when net/http (or a handler that hijacked it) has closed
// it, as when each connection had its own server.
type connServer struct {
	srv   *http.Server
	conns chan net.Conn
	// closed is closed by close: Accept then fails and Serve returns.
	closed    chan struct{}
	closeOnce sync.Once
	// served is closed when Serve has returned.
	served chan struct{}
}

func newConnServer(srv *http.Server) *connServer {
	return &connServer{srv: srv, conns: make(chan net.Conn), closed: make(chan struct{}), served: make(chan struct{})}
}

// run serves the connections handed over until stop. The caller owns the
// goroutine it runs on.
func (s *connServer) run() {
	defer close(s.served)
	_ = s.srv.Serve(connListener{s})
}

// serve hands c to the server and waits until the server is done with it:
// until cn, the closeNotifier c is or wraps, is closed. A server already
// stopped closes c at once and reports false.
func (s *connServer) serve(c net.Conn, cn *closeNotifier) bool {
	select {
	case s.conns <- c:
	case <-s.closed:
		_ = cn.Close()
		return false
	}
	<-cn.closed
	// HTTP/2's frame reader may still be returning from its last read.
	cn.quiesce()
	return true
}

// stop ends run and waits for it. Connections still open are not
// touched: their owners close them (Proxy.drain).
func (s *connServer) stop() {
	s.close()
	<-s.served
}

func (s *connServer) close() { s.closeOnce.Do(func() { close(s.closed) }) }

// connListener is the server's listener: the connections handed over.
type connListener struct{ s *connServer }

func (l connListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.s.conns:
		return c, nil
	case <-l.s.closed:
		return nil, net.ErrClosed
	}
}

func (l connListener) Close() error { l.s.close(); return nil }

// Addr is no socket's: connections come from the proxy's own listeners.
func (connListener) Addr() net.Addr { return connAddr{} }

type connAddr struct{}

func (connAddr) Network() string { return "handed-over" }
func (connAddr) String() string  { return "handed-over" }
