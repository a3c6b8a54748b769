package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/mesh-dev/mesh/internal/ration"
)

// Proxy is one pod's sidecar.
type Proxy struct {
	cfg      Config
	m        *metrics
	sessions tls.ClientSessionCache
	srvTLS   *tls.Config
	// transports reach the local app for terminated HTTP; plain reaches
	// endpoints outside the mesh, in permissive outbound mode.
	transports, plain *httpTransports
	outHTTP           *outboundHTTP
	// logged rations "connection refused" log lines, which an attacker
	// could otherwise use to flood the log.
	logged *ration.Ration

	mu    sync.Mutex
	conns map[net.Conn]struct{}
	// tcp are the open opaque inbound connections and what was decided
	// for them, re-decided when the policy changes.
	tcp map[net.Conn]*Request
	// peers are the open mTLS connections and whom they are with,
	// re-checked when the destinations change (revoke.go).
	peers   map[net.Conn]*peerConn
	wg      sync.WaitGroup
	stopped bool

	shutdown chan struct{}
	// draining is closed when Run stops accepting: HTTP servers then
	// stop gracefully.
	draining chan struct{}
	ready    atomic.Bool

	// Outbound HTTP: the endpoints' statistics, the pooled connections
	// to other proxies, and the route labels of each direction.
	bal                 *balancer
	pool                *pool
	routesIn, routesOut *routes

	// slots bounds the connections served at once (MaxConnections).
	slots chan struct{}
	// ownPorts are the proxy's listener ports: a connection whose original
	// destination is one of them would loop through the proxy.
	ownPorts []uint16
	// audited rations the audit records of refusals, per reason.
	audited *ration.Keyed
}

// New validates cfg and returns a proxy; Run starts it.
func New(cfg Config) (*Proxy, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	m, err := newMetrics(cfg.Registerer)
	if err != nil {
		return nil, err
	}
	p := &Proxy{
		cfg: cfg, m: m,
		sessions: tls.NewLRUClientSessionCache(1024),
		logged:   ration.New(100*time.Millisecond, 20),
		audited:  ration.NewKeyed(200*time.Millisecond, 10),
		conns:    map[net.Conn]struct{}{},
		tcp:      map[net.Conn]*Request{},
		peers:    map[net.Conn]*peerConn{},
		shutdown: make(chan struct{}),
		draining: make(chan struct{}),
		bal:      newBalancer(),
		routesIn: newRoutes(cfg.MaxRoutes), routesOut: newRoutes(cfg.MaxRoutes),
		slots: make(chan struct{}, cfg.MaxConnections),
	}
	for _, a := range []string{cfg.InboundAddr, cfg.OutboundAddr, cfg.AdminAddr} {
		if _, port, err := net.SplitHostPort(a); err == nil {
			if n, err := strconv.ParseUint(port, 10, 16); err == nil && n != 0 {
				p.ownPorts = append(p.ownPorts, uint16(n))
			}
		}
	}
	p.srvTLS = p.serverTLS()
	p.transports = newHTTPTransports(cfg.Dial).withDirect()
	p.plain = newHTTPTransports(cfg.Dial)
	p.pool = newPool(p)
	p.outHTTP = p.newOutboundHTTP()
	p.outHTTP.srv = p.newOutboundServer()
	return p, nil
}

// Run serves until ctx ends or /shutdown is called, then stops accepting
// and lets open connections finish for up to DrainTimeout before closing
// them.
func (p *Proxy) Run(ctx context.Context) error {
	in, err := p.cfg.Listen(ctx, "tcp", p.cfg.InboundAddr)
	if err != nil {
		return fmt.Errorf("proxy: inbound listener: %w", err)
	}
	out, err := p.cfg.Listen(ctx, "tcp", p.cfg.OutboundAddr)
	if err != nil {
		in.Close()
		return fmt.Errorf("proxy: outbound listener: %w", err)
	}
	// iptables redirects the pod's IPv6 connections to ::1: listen there
	// too when the outbound side is on IPv4 loopback and IPv6 exists.
	var out6 net.Listener
	if host, port, _ := net.SplitHostPort(p.cfg.OutboundAddr); host == "127.0.0.1" {
		out6, _ = p.cfg.Listen(ctx, "tcp6", net.JoinHostPort("::1", port))
	}
	var admin net.Listener
	if p.cfg.AdminAddr != "-" {
		if admin, err = p.cfg.Listen(ctx, "tcp", p.cfg.AdminAddr); err != nil {
			in.Close()
			out.Close()
			return fmt.Errorf("proxy: admin listener: %w", err)
		}
	}
	p.cfg.Logger.Info("proxy listening", "inbound", in.Addr().String(), "outbound", out.Addr().String(), "inboundMode", p.cfg.InboundMode, "outboundMode", p.cfg.OutboundMode)

	// The outbound HTTP server stops after drain, when no connection is
	// left to hand to it.
	// (stop waits for run to return.)
	go p.outHTTP.srv.run()
	defer p.outHTTP.srv.stop()
	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	g, gctx := errgroup.WithContext(runCtx)
	g.Go(func() error { return p.accept(gctx, in, p.inbound) })
	g.Go(func() error { return p.accept(gctx, out, p.outbound) })
	if out6 != nil {
		g.Go(func() error { return p.accept(gctx, out6, p.outbound) })
	}
	if admin != nil {
		g.Go(func() error { return p.serveAdmin(gctx, admin) })
	}
	g.Go(func() error { return p.watchSVID(gctx) })
	if n, ok := p.cfg.Authorizer.(Notifier); ok {
		g.Go(func() error { return p.watchPolicy(gctx, n) })
	}
	if n, ok := p.cfg.Destinations.(Notifier); ok {
		g.Go(func() error { return p.watchDestinations(gctx, n) })
	}
	g.Go(func() error {
		t := time.NewTicker(time.Minute)
		defer t.Stop()
		for {
			select {
			case <-gctx.Done():
				return nil
			case <-t.C:
				p.bal.forget()
			}
		}
	})
	g.Go(func() error {
		select {
		case <-gctx.Done():
		case <-p.shutdown:
		}
		close(p.draining)
		cancel()
		in.Close()
		out.Close()
		if out6 != nil {
			out6.Close()
		}
		return nil
	})
	err = g.Wait()
	p.drain()
	// The application's connections are gone: what is left on pooled
	// connections has no one to answer to. A short bound, so that the
	// proxy's stop stays within its drain timeout and a pod's grace.
	p.pool.shutdown(time.Second)
	// Kept connections to the application (direct.go has no reader to
	// notice the application closing them): closed with the proxy.
	p.transports.direct.CloseIdleConnections()
	if errors.Is(err, context.Canceled) {
		err = nil
	}
	return err
}

// Shutdown asks Run to stop, as /shutdown does.
func (p *Proxy) Shutdown() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.stopped {
		p.stopped = true
		close(p.shutdown)
	}
}

func (p *Proxy) accept(ctx context.Context, ln net.Listener, handle func(context.Context, net.Conn)) error {
	listener := ln.Addr().String()
	var backoff time.Duration
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			if errors.Is(err, net.ErrClosed) {
				return fmt.Errorf("proxy: accept on %s: %w", listener, err)
			}
			// EMFILE, ENFILE, ECONNABORTED, ...: the listener still
			// works; back off as net/http does instead of ending the
			// proxy (which would drop every open connection).
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			p.m.acceptErrors.WithLabelValues(listener).Inc()
			p.refuse("accept", "accept_error", "listener", listener, "err", err, "retryIn", backoff.String())
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(backoff):
			}
			continue
		}
		backoff = 0
		select {
		case p.slots <- struct{}{}:
		default:
			// At MaxConnections: close at once rather than leave the
			// client waiting in the backlog.
			p.m.limitReached.WithLabelValues(listener).Inc()
			p.refuse("accept", "max_connections", "listener", listener, "max", p.cfg.MaxConnections)
			c.Close()
			continue
		}
		if !p.track(c) {
			<-p.slots
			c.Close()
			continue
		}
		go func() {
			defer func() { <-p.slots }()
			defer p.untrack(c)
			handle(ctx, c)
		}()
	}
}

func (p *Proxy) track(c net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.conns == nil {
		return false
	}
	p.conns[c] = struct{}{}
	p.wg.Add(1)
	return true
}

func (p *Proxy) untrack(c net.Conn) {
	c.Close()
	p.mu.Lock()
	delete(p.conns, c)
	delete(p.peers, c)
	p.mu.Unlock()
	p.wg.Done()
}

// drain waits for open connections up to DrainTimeout, then closes them.
func (p *Proxy) drain() {
	done := make(chan struct{})
	go func() { p.wg.Wait(); close(done) }()
	select {
	case <-done:
		return
	case <-time.After(p.cfg.DrainTimeout):
	}
	p.mu.Lock()
	for c := range p.conns {
		c.Close()
	}
	p.conns = nil
	p.mu.Unlock()
	<-done
}

// refuse logs a refused connection (rate-limited) and counts it.
func (p *Proxy) refuse(direction, reason string, attrs ...any) {
	p.m.refused.WithLabelValues(direction, reason).Inc()
	ok, n := p.logged.Allow()
	if !ok {
		return
	}
	if n > 0 {
		attrs = append(attrs, "suppressed", n)
	}
	p.cfg.Logger.Warn("connection refused", append([]any{"direction", direction, "reason", reason}, attrs...)...)
}

// halfCloser is a connection whose write side can be closed alone.
type halfCloser interface {
	net.Conn
	CloseWrite() error
}

// splice copies both ways until both sides are done, passing half-closes
// through, and counts bytes. A connection on which no byte moves for
// IdleTimeout is closed.
func (p *Proxy) splice(direction, peerID string, app, peer net.Conn) {
	idle := p.watchIdle(app, peer)
	defer idle.stop()
	var wg sync.WaitGroup
	cp := func(dst, src net.Conn, flow string) {
		defer wg.Done()
		buf := copyBufs.Get().(*[]byte)
		n, _ := io.CopyBuffer(activityWriter{dst, idle}, src, *buf)
		copyBufs.Put(buf)
		p.m.bytes.WithLabelValues(direction, peerID, flow).Add(float64(n))
		if hc, ok := dst.(halfCloser); ok {
			_ = hc.CloseWrite()
		} else {
			_ = dst.Close()
		}
	}
	wg.Add(2)
	go cp(app, peer, "to_app")
	go cp(peer, app, "from_app")
	wg.Wait()
}

// activityWriter marks the idle watch at every write.
type activityWriter struct {
	net.Conn
	w *idleWatch
}

func (a activityWriter) Write(b []byte) (int, error) {
	a.w.touch()
	return a.Conn.Write(b)
}

// idleWatch closes connections on which nothing moved for a while. It
// costs one timer per connection, re-armed only when it fires, and an
// atomic store per write.
type idleWatch struct {
	last    atomic.Int64 // unix nanoseconds of the last write
	timeout time.Duration
	timer   *time.Timer
	conns   []net.Conn
	m       *metrics
}

func (p *Proxy) watchIdle(conns ...net.Conn) *idleWatch {
	w := &idleWatch{timeout: p.cfg.IdleTimeout, conns: conns, m: p.m}
	w.touch()
	w.timer = time.AfterFunc(w.timeout, w.check)
	return w
}

func (w *idleWatch) touch() { w.last.Store(time.Now().UnixNano()) }

func (w *idleWatch) check() {
	idle := time.Since(time.Unix(0, w.last.Load()))
	if idle < w.timeout {
		w.timer.Reset(w.timeout - idle)
		return
	}
	w.m.idleClosed.Inc()
	for _, c := range w.conns {
		_ = c.Close()
	}
}

func (w *idleWatch) stop() { w.timer.Stop() }

// copyBufs are splice buffers, reused across connections: the
// per-connection path allocates no 32 KiB buffers.
var copyBufs = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}

// watchPolicy re-decides open TCP connections at every policy change and
// closes those the new policy denies.
func (p *Proxy) watchPolicy(ctx context.Context, n Notifier) error {
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-n.Updated():
		}
		p.mu.Lock()
		open := make(map[net.Conn]*Request, len(p.tcp))
		for c, r := range p.tcp {
			open[c] = r
		}
		p.mu.Unlock()
		for c, r := range open {
			d := p.cfg.Authorizer.Authorize(r)
			if d.Allow {
				continue
			}
			p.countDecision(d, "inbound")
			p.observe(r, d, 0)
			p.refuse("inbound", "denied_by_policy_change", "source", r.Source.String(), "peer", r.Peer.String(), "port", r.DestinationPort, "policy", d.Policy, "rule", d.Rule, "why", d.Reason)
			c.Close()
		}
	}
}

func (p *Proxy) observe(r *Request, d Decision, status int) {
	if o, ok := p.cfg.Authorizer.(Observer); ok {
		o.Observe(r, d, status)
	}
}

// watchSVID keeps /ready and the expiry metric current.
func (p *Proxy) watchSVID(ctx context.Context) error {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	var serial string
	for {
		svid, err := p.cfg.Identity.GetX509SVID()
		ok := err == nil && time.Now().Before(svid.Certificates[0].NotAfter)
		if r, isReadier := p.cfg.Authorizer.(Readier); isReadier && !r.Ready() {
			ok = false
		}
		if p.cfg.Readiness != nil && !p.cfg.Readiness.Ready() {
			ok = false
		}
		p.ready.Store(ok)
		if err == nil {
			leaf := svid.Certificates[0]
			p.m.svidExpiry.Set(float64(leaf.NotAfter.Unix()))
			if s := leaf.SerialNumber.String(); s != serial {
				if serial != "" {
					p.m.renewals.Inc()
				}
				serial = s
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

func tlsVersion(v uint16) string {
	if v == tls.VersionTLS13 {
		return "1.3"
	}
	return fmt.Sprintf("%#x", v)
}
