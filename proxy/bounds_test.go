package proxy_test

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/mesh-dev/mesh/internal/testpki"
	"github.com/mesh-dev/mesh/proxy"
)

// echoServer is an opaque TCP echo app on loopback.
func echoServer(t *testing.T) uint16 {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); io.Copy(c, c) }()
		}
	}()
	return uint16(ln.Addr().(*net.TCPAddr).Port)
}

// inboundProxy runs a server-side proxy on loopback in front of an echo
// app on a declared opaque port, with mod applied to its configuration,
// and returns its inbound address and metrics.
func inboundProxy(t *testing.T, pki *testpki.PKI, mod func(*proxy.Config)) (string, *prometheus.Registry) {
	t.Helper()
	app := echoServer(t)
	reg := prometheus.NewRegistry()
	in := freeAddr(t)
	cfg := proxy.Config{
		Identity: pki.Source(t, serverID.String()), TrustDomain: pki.TD, Destinations: proxy.StaticDestinations{},
		InboundAddr: in, OutboundAddr: "127.0.0.1:0", AdminAddr: "-",
		PortProtocols: map[uint16]proxy.AppProtocol{app: proxy.ProtocolOpaque},
		OriginalDst: func(*net.TCPConn) (netip.AddrPort, error) {
			return netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), app), nil
		},
		Registerer: reg, Gatherer: reg, Logger: slog.New(slog.DiscardHandler), DrainTimeout: time.Second,
	}
	if mod != nil {
		mod(&cfg)
	}
	p, err := proxy.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("proxy: %v", err)
		}
	})
	waitUp(t, in)
	return in, reg
}

// meshConn opens an mTLS connection to addr as the client workload and
// checks that one round trip through the echo app works.
func meshConn(t *testing.T, pki *testpki.PKI, addr string) (*tls.Conn, error) {
	t.Helper()
	c, err := tls.Dial("tcp", addr, meshTLS(t, tlsCert(t, pki, clientID), proxy.ALPN))
	if err != nil {
		return nil, err
	}
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write([]byte("ping")); err != nil {
		c.Close()
		return nil, err
	}
	buf := make([]byte, 4)
	if _, err := io.ReadFull(c, buf); err != nil {
		c.Close()
		return nil, err
	}
	_ = c.SetDeadline(time.Time{})
	return c, nil
}

// TestMaxConnections: beyond MaxConnections a new connection is closed at
// once and counted; when one closes, there is room again.
func TestMaxConnections(t *testing.T) {
	pki := testpki.New(t, "cluster.local")
	in, reg := inboundProxy(t, pki, func(c *proxy.Config) { c.MaxConnections = 2 })
	var open []*tls.Conn
	for i := range 2 {
		c, err := meshConn(t, pki, in)
		if err != nil {
			t.Fatalf("connection %d within the limit: %v", i, err)
		}
		defer c.Close()
		open = append(open, c)
	}
	if c, err := meshConn(t, pki, in); err == nil {
		c.Close()
		t.Fatal("a third connection was served with MaxConnections 2")
	}
	if n := metric(t, reg, "mesh_proxy_connections_limit_reached_total", nil); n != 1 {
		t.Fatalf("limit reached %v times, want 1", n)
	}
	open[0].Close()
	waitFor(t, 5*time.Second, "a slot to free up", func() error {
		c, err := meshConn(t, pki, in)
		if err != nil {
			return err
		}
		return c.Close()
	})
}

// TestIdleTimeout: an opaque connection on which nothing moves is closed
// after IdleTimeout; one that keeps talking is not.
func TestIdleTimeout(t *testing.T) {
	pki := testpki.New(t, "cluster.local")
	in, reg := inboundProxy(t, pki, func(c *proxy.Config) { c.IdleTimeout = 2 * time.Second })
	busy, err := meshConn(t, pki, in)
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	idle, err := meshConn(t, pki, in)
	if err != nil {
		t.Fatal(err)
	}
	defer idle.Close()
	closed := make(chan error, 1)
	go func() {
		_ = idle.SetReadDeadline(time.Now().Add(10 * time.Second))
		_, err := idle.Read(make([]byte, 1))
		closed <- err
	}()
	// 3 s of beats every 100 ms, past the 2 s timeout: a machine would
	// have to stall the test for most of 2 s to close the busy one.
	buf := make([]byte, 4)
	for range 30 {
		time.Sleep(100 * time.Millisecond)
		_ = busy.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := busy.Write([]byte("beat")); err != nil {
			t.Fatalf("the busy connection was closed: %v", err)
		}
		if _, err := io.ReadFull(busy, buf); err != nil {
			t.Fatalf("the busy connection was closed: %v", err)
		}
	}
	select {
	case err := <-closed:
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			t.Fatal("the idle connection was not closed")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the idle connection was not closed")
	}
	if n := metric(t, reg, "mesh_proxy_idle_timeouts_total", nil); n != 1 {
		t.Fatalf("idle timeouts = %v, want 1 (the busy connection stays)", n)
	}
}

// flakyListener fails its first Accept calls with EMFILE, as a process out
// of file descriptors does.
type flakyListener struct {
	net.Listener
	failures atomic.Int32
}

func (l *flakyListener) Accept() (net.Conn, error) {
	if l.failures.Add(-1) >= 0 {
		return nil, &net.OpError{Op: "accept", Net: "tcp", Err: os.NewSyscallError("accept4", syscall.EMFILE)}
	}
	return l.Listener.Accept()
}

// TestAcceptErrorsBackOff: an Accept error such as EMFILE does not end the
// proxy; it backs off, counts, and serves again.
func TestAcceptErrorsBackOff(t *testing.T) {
	pki := testpki.New(t, "cluster.local")
	in, reg := inboundProxy(t, pki, func(c *proxy.Config) {
		listen := c.Listen
		if listen == nil {
			var lc net.ListenConfig
			listen = lc.Listen
		}
		inbound := c.InboundAddr
		c.Listen = func(ctx context.Context, network, addr string) (net.Listener, error) {
			ln, err := listen(ctx, network, addr)
			if err != nil || addr != inbound {
				return ln, err
			}
			fl := &flakyListener{Listener: ln}
			fl.failures.Store(5)
			return fl, nil
		}
	})
	c, err := meshConn(t, pki, in)
	if err != nil {
		t.Fatalf("after accept errors: %v", err)
	}
	c.Close()
	if n := metric(t, reg, "mesh_proxy_accept_errors_total", nil); n != 5 {
		t.Fatalf("accept errors = %v, want 5", n)
	}
}
