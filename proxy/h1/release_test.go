package h1_test

import (
	"errors"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/mesh-dev/mesh/proxy/h1"
)

// TestRelease: after Release a gate reads nothing, whatever state it was
// in, and a gate that reuses a released buffer hands out only its own
// connection's bytes.
func TestRelease(t *testing.T) {
	tests := []struct {
		name string
		in   string
	}{
		{"between requests", "GET /a HTTP/1.1\r\nHost: a\r\n\r\n"},
		{"in a body", "POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\nsecret-body"},
		{"in a chunked body", "POST /a HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n6\r\nsecret\r\n"},
		{"opaque after an upgrade", "GET /a HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\nsecret-frames"},
		{"rejected", "GET /a HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			client, server := net.Pipe()
			defer client.Close()
			g := h1.NewGate(server, h1.Config{})
			go func() { _, _ = client.Write([]byte(tc.in + "secret-unread-tail")) }()
			buf := make([]byte, 8)
			if _, err := g.Read(buf); err != nil {
				t.Fatalf("first read: %v", err)
			}
			g.Release()
			if n, err := g.Read(buf); n != 0 || !errors.Is(err, net.ErrClosed) {
				t.Fatalf("read after Release: %d bytes, %v; want 0, net.ErrClosed", n, err)
			}
			g.Release() // twice is harmless

			// The next gates may get the released buffer: each hands out
			// exactly its own bytes.
			for i := range 4 {
				c2, s2 := net.Pipe()
				g2 := h1.NewGate(s2, h1.Config{})
				req := "GET /b HTTP/1.1\r\nHost: b\r\n\r\n"
				go func() { _, _ = c2.Write([]byte(req)); c2.Close() }()
				got, err := io.ReadAll(g2)
				if err != nil && !errors.Is(err, io.EOF) {
					t.Fatalf("gate %d: %v", i, err)
				}
				if string(got) != req || strings.Contains(string(got), "secret") {
					t.Fatalf("gate %d handed out %q, want %q", i, got, req)
				}
				g2.Release()
				s2.Close()
			}
		})
	}
}

// TestReleaseWaitsForRead: a Release during a Read waits for it, so the
// buffer never goes back while a Read fills it.
func TestReleaseWaitsForRead(t *testing.T) {
	client, server := net.Pipe()
	g := h1.NewGate(server, h1.Config{})
	readDone := make(chan error, 1)
	go func() {
		_, err := g.Read(make([]byte, 64))
		readDone <- err
	}()
	// The Read is blocked on the pipe (nothing written). Release must not
	// return before it; closing the connection ends it.
	released := make(chan struct{})
	go func() { g.Release(); close(released) }()
	select {
	case <-released:
		// Release may have run first, before Read took the lock: then
		// Read must fail without reading.
		client.Close()
		if err := <-readDone; !errors.Is(err, net.ErrClosed) && !errors.Is(err, io.ErrClosedPipe) && !errors.Is(err, io.EOF) {
			t.Fatalf("read: %v", err)
		}
		return
	case <-time.After(100 * time.Millisecond):
	}
	client.Close()
	if err := <-readDone; err == nil {
		t.Fatal("read succeeded on a closed pipe")
	}
	<-released
}
