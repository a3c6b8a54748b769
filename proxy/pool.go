package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"time"

	"golang.org/x/net/http2"
)

// pool holds the long-lived HTTP/2-over-mTLS connections from this proxy
// to other proxies (ALPNH2), one set per endpoint (address and required
// identity). Requests from every application connection share them, so a
// new application connection costs no handshake.
//
// It is the http2.Transport's ClientConnPool: the transport asks it for a
// connection per request, and retries on a fresh one by itself when a
// connection it was given turned out to be going away (GOAWAY) before the
// request was processed.
type pool struct {
	p *Proxy
	t *http2.Transport

	mu sync.Mutex
	// ctx bounds connections being made; shutdown cancels it.
	ctx     context.Context
	cancel  context.CancelFunc
	conns   map[endpointKey][]*http2.ClientConn
	dialing map[endpointKey]*dialCall
	keys    map[*http2.ClientConn]endpointKey
	closed  bool
	wg      sync.WaitGroup
}

// dialCall is one connection being made, which every request that needs
// it waits for.
type dialCall struct {
	done chan struct{}
	cc   *http2.ClientConn
	err  error
}

// target is the endpoint a request is for, set in its context by the
// balancer: the pool dials it.
type target struct {
	key            endpointKey
	connectTimeout time.Duration
	// src is the application connection's address, for the audit record
	// of a wrong identity.
	src netip.AddrPort
}

type targetKey struct{}

// connectError is a failure to reach an endpoint: nothing was sent, so
// the request may go to another endpoint whatever its method.
type connectError struct {
	addr   string
	reason string
	err    error
}

func (e *connectError) Error() string {
	return fmt.Sprintf("connect to %s: %s: %v", e.addr, e.reason, e.err)
}
func (e *connectError) Unwrap() error { return e.err }

func newPool(p *Proxy) *pool {
	pl := &pool{
		p:       p,
		conns:   map[endpointKey][]*http2.ClientConn{},
		dialing: map[endpointKey]*dialCall{},
		keys:    map[*http2.ClientConn]endpointKey{},
	}
	pl.ctx, pl.cancel = context.WithCancel(context.Background())
	pl.t = &http2.Transport{
		ConnPool:           pl,
		DisableCompression: true,
		// Pooled connections that died silently (a peer node gone) are
		// found by pings, as Linkerd does (DESIGN-NOTES §9; golang/go#31643).
		ReadIdleTimeout: 10 * time.Second,
		PingTimeout:     3 * time.Second,
		// Closed when unused, so connections to endpoints that left do
		// not linger.
		IdleConnTimeout:   5 * time.Minute,
		MaxHeaderListSize: MaxHeaderBytes,
		DialTLSContext: func(context.Context, string, string, *tls.Config) (net.Conn, error) {
			return nil, errors.New("proxy: the pool dials, not the transport")
		},
	}
	return pl
}

// shutdown closes every pooled connection, letting requests in progress
// finish for up to d, and waits for connections being made. Called by Run
// after draining the application's connections.
func (pl *pool) shutdown(d time.Duration) {
	pl.mu.Lock()
	pl.closed = true
	pl.cancel()
	var all []*http2.ClientConn
	for _, ccs := range pl.conns {
		all = append(all, ccs...)
	}
	pl.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	var wg sync.WaitGroup
	for _, cc := range all {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if cc.Shutdown(ctx) != nil {
				_ = cc.Close()
			}
		}()
	}
	wg.Wait()
	pl.wg.Wait()
}

// GetClientConn implements http2.ClientConnPool: a pooled connection to
// the request's target with room for one more stream, or a new one.
func (pl *pool) GetClientConn(req *http.Request, _ string) (*http2.ClientConn, error) {
	t, ok := req.Context().Value(targetKey{}).(*target)
	if !ok {
		return nil, errors.New("proxy: pooled request without a target")
	}
	for range 3 {
		pl.mu.Lock()
		if pl.closed {
			pl.mu.Unlock()
			return nil, &connectError{t.key.addr.String(), "shutting_down", errors.New("the proxy is shutting down")}
		}
		for _, cc := range pl.conns[t.key] {
			if cc.ReserveNewRequest() {
				pl.mu.Unlock()
				return cc, nil
			}
		}
		call, ok := pl.dialing[t.key]
		if !ok {
			call = &dialCall{done: make(chan struct{})}
			pl.dialing[t.key] = call
			ctx := pl.ctx
			pl.wg.Add(1)
			go func() {
				defer pl.wg.Done()
				pl.dial(ctx, call, t)
			}()
		}
		pl.mu.Unlock()
		select {
		case <-call.done:
		case <-req.Context().Done():
			return nil, req.Context().Err()
		}
		if call.err != nil {
			return nil, call.err
		}
		if call.cc.ReserveNewRequest() {
			return call.cc, nil
		}
		// Full already (many requests waited for this one): again.
	}
	return nil, &connectError{t.key.addr.String(), "pool_exhausted", errors.New("no pooled connection had room after 3 attempts")}
}

// MarkDead implements http2.ClientConnPool: cc is closing.
func (pl *pool) MarkDead(cc *http2.ClientConn) {
	pl.mu.Lock()
	defer pl.mu.Unlock()
	k, ok := pl.keys[cc]
	if !ok {
		return
	}
	delete(pl.keys, cc)
	ccs := pl.conns[k]
	for i, c := range ccs {
		if c == cc {
			ccs = append(ccs[:i:i], ccs[i+1:]...)
			break
		}
	}
	if len(ccs) == 0 {
		delete(pl.conns, k)
	} else {
		pl.conns[k] = ccs
	}
}

// dial makes one pooled connection to t: TCP, the mTLS handshake
// requiring t's identity, and HTTP/2 on it. Its context is the pool's, not
// the request's: a request that gives up does not fail the others waiting.
func (pl *pool) dial(ctx context.Context, call *dialCall, t *target) {
	p := pl.p
	addr := t.key.addr.String()
	cc, err := func() (*http2.ClientConn, error) {
		conn, err := p.dialMesh(ctx, t, ALPNH2)
		if err != nil {
			return nil, err
		}
		pc := &pooledConn{Conn: conn, p: p, peer: t.key.id.String()}
		cc, err := pl.t.NewClientConn(pc)
		if err != nil {
			conn.Close()
			return nil, &connectError{addr, "http2_failed", err}
		}
		p.m.opened.WithLabelValues("outbound", pc.peer, "mtls").Inc()
		p.m.openOut.Inc()
		// Revocation (revoke.go) closes it if the pod at addr changes.
		if !p.trackPooled(pc, t.key.addr, t.key.id) {
			cc.Close()
			return nil, &connectError{addr, "shutting_down", errors.New("the proxy is shutting down")}
		}
		return cc, nil
	}()
	pl.mu.Lock()
	delete(pl.dialing, t.key)
	if err == nil {
		if pl.closed {
			cc.Close()
			err = &connectError{addr, "shutting_down", errors.New("the proxy is shutting down")}
			cc = nil
		} else {
			pl.conns[t.key] = append(pl.conns[t.key], cc)
			pl.keys[cc] = t.key
		}
	}
	call.cc, call.err = cc, err
	pl.mu.Unlock()
	close(call.done)
}

// pooledConn is a pooled connection's socket: its close is counted once
// and ends its revocation tracking.
type pooledConn struct {
	net.Conn
	p    *Proxy
	peer string
	once sync.Once
}

func (c *pooledConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() {
		c.p.untrackPooled(c)
		c.p.m.openOut.Dec()
		c.p.m.closed.WithLabelValues("outbound", c.peer, "mtls").Inc()
	})
	return err
}
