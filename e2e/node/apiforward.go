package node

import (
	"context"
	"fmt"
	"io"
	"net"
	"strconv"
	"sync"
	"time"
)

// apiForwarder relays TCP connections from the node's address to the API
// server on loopback. kube-apiserver binds 127.0.0.1 only, while the
// kubernetes Service's endpoint is its advertise address, the node's
// 198.18.0.1: this is the one listener on that address that reaches it.
// TLS passes through untouched; the API server's certificate names both
// addresses and the Service's ClusterIP.
type apiForwarder struct {
	ln     net.Listener
	target string
}

func listenAPIForwarder(apiPort int) (*apiForwarder, error) {
	ln, err := net.Listen("tcp", apiServerAddr(apiPort))
	if err != nil {
		return nil, fmt.Errorf("node: API server forwarder: %w", err)
	}
	return &apiForwarder{ln: ln, target: net.JoinHostPort("127.0.0.1", strconv.Itoa(apiPort))}, nil
}

// serve relays until ctx ends, then closes the listener and every relayed
// connection and returns once their goroutines have.
func (f *apiForwarder) serve(ctx context.Context) {
	var wg sync.WaitGroup
	defer wg.Wait()
	stop := context.AfterFunc(ctx, func() { f.ln.Close() })
	defer stop()
	defer f.ln.Close()
	for {
		c, err := f.ln.Accept()
		if err != nil {
			return // closed: the agent is stopping
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			f.relay(ctx, c)
		}()
	}
}

func (f *apiForwarder) relay(ctx context.Context, c net.Conn) {
	defer c.Close()
	d := net.Dialer{Timeout: 5 * time.Second}
	up, err := d.DialContext(ctx, "tcp", f.target)
	if err != nil {
		return
	}
	defer up.Close()
	// Either side ending, or the agent stopping, ends both.
	stop := context.AfterFunc(ctx, func() { c.Close(); up.Close() })
	defer stop()
	done := make(chan struct{}, 2)
	pipe := func(dst, src net.Conn) {
		_, _ = io.Copy(dst, src)
		if tc, ok := dst.(*net.TCPConn); ok {
			_ = tc.CloseWrite()
		}
		done <- struct{}{}
	}
	go pipe(up, c)
	go pipe(c, up)
	<-done
	<-done
}
