package h1_test

import (
	"errors"
	"fmt"
	"io"
	"net"
	"runtime"
	"strings"
	"sync"
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

			reuseReleased(t)
		})
	}
}

// reuseReleased holds several new gates at once, which may get released
// buffers, and checks that each hands out exactly its own connection's
// bytes: each first hands out a few bytes, so that the rest of its head
// waits in its buffer while the next gates fill theirs; a buffer given
// to two gates at once (Release putting it back twice) then shows as one
// gate handing out another's bytes. Every gate is released twice, as the
// first was. There are rounds because the race detector's sync.Pool drops
// a quarter of what is put back.
func reuseReleased(t *testing.T) {
	t.Helper()
	// first is less than the bytes the requests share.
	const gates, first = 4, 8
	for round := range 8 {
		type held struct {
			g     *h1.Gate
			c, s  net.Conn
			req   string
			wrote chan struct{}
		}
		hs := make([]held, gates)
		for i := range hs {
			c, s := net.Pipe()
			h := held{g: h1.NewGate(s, h1.Config{}), c: c, s: s, wrote: make(chan struct{}),
				req: fmt.Sprintf("GET / HTTP/1.1\r\nHost: gate-%d-%d\r\n\r\n", round, i)}
			hs[i] = h
			// Closed at the end of the round, or of a failed test: the
			// writer then returns.
			t.Cleanup(func() { c.Close(); s.Close() })
			go func() { defer close(h.wrote); _, _ = c.Write([]byte(h.req)) }()
			got := make([]byte, first)
			if _, err := io.ReadFull(h.g, got); err != nil || string(got) != h.req[:first] {
				t.Fatalf("round %d gate %d: first %d bytes %q, %v; want %q", round, i, first, got, err, h.req[:first])
			}
		}
		for i, h := range hs {
			<-h.wrote
			rest := make([]byte, len(h.req)-first)
			if _, err := io.ReadFull(h.g, rest); err != nil {
				t.Fatalf("round %d gate %d: %v", round, i, err)
			}
			if got := h.req[:first] + string(rest); got != h.req || strings.Contains(got, "secret") {
				t.Fatalf("round %d gate %d handed out %q, want %q", round, i, got, h.req)
			}
		}
		for _, h := range hs {
			h.g.Release()
			h.g.Release()
			h.c.Close()
			h.s.Close()
			<-h.wrote
		}
	}
}

// TestReleaseWaitsForRead: a Release during a Read waits for it: the Read
// in progress finishes, with the bytes its connection gave it, before
// Release returns, so the buffer never goes back while a Read fills it;
// the next Read fails.
func TestReleaseWaitsForRead(t *testing.T) {
	const req = "GET /a HTTP/1.1\r\nHost: a\r\n\r\n"
	var mu sync.Mutex
	var events []string
	note := func(e string) { mu.Lock(); events = append(events, e); mu.Unlock() }
	c := &blockedConn{entered: make(chan struct{}), data: make(chan []byte), note: note}
	// Whatever happens, the connection's Read is let go.
	t.Cleanup(func() { close(c.data) })
	g := h1.NewGate(c, h1.Config{})
	type result struct {
		b   string
		err error
	}
	readDone := make(chan result, 1)
	go func() {
		buf := make([]byte, 64)
		n, err := g.Read(buf)
		readDone <- result{string(buf[:n]), err}
	}()
	<-c.entered // the Read is in progress, inside the gate
	released := make(chan struct{})
	go func() { g.Release(); note("Release returned"); close(released) }()
	if !waitLocked(released, "h1.(*Gate).Release") {
		t.Fatalf("Release returned (or never waited) while a Read was in progress: %q", events)
	}
	c.data <- []byte(req)
	<-released
	if r := <-readDone; r.err != nil || r.b != req {
		t.Fatalf("the Read in progress returned %q, %v; want %q, nil", r.b, r.err, req)
	}
	mu.Lock()
	got := strings.Join(events, ", ")
	mu.Unlock()
	if want := "the connection's Read returned, Release returned"; got != want {
		t.Fatalf("events: %s; want %s", got, want)
	}
	if n, err := g.Read(make([]byte, 64)); n != 0 || !errors.Is(err, net.ErrClosed) {
		t.Fatalf("read after Release: %d bytes, %v; want 0, net.ErrClosed", n, err)
	}
}

// blockedConn is a connection whose Read says it has been entered, then
// waits for the bytes the test gives it.
type blockedConn struct {
	net.Conn // nil: the gate only reads
	once     sync.Once
	entered  chan struct{}
	data     chan []byte
	note     func(string)
}

func (c *blockedConn) Read(p []byte) (int, error) {
	c.once.Do(func() { close(c.entered) })
	b, ok := <-c.data
	if !ok {
		return 0, net.ErrClosed
	}
	c.note("the connection's Read returned")
	return copy(p, b), nil
}

// waitLocked waits until a goroutine with fn on its stack is parked in
// sync.Mutex.Lock, and reports whether it saw one before done was closed.
// A goroutine dump is the one deterministic way to see that another
// goroutine waits for a lock (testing/synctest does not count a mutex as
// durably blocking). Bounded: about ten seconds.
func waitLocked(done <-chan struct{}, fn string) bool {
	buf := make([]byte, 1<<20)
	for range 10000 {
		select {
		case <-done:
			return false
		default:
		}
		n := runtime.Stack(buf, true)
		for _, gs := range strings.Split(string(buf[:n]), "\n\n") {
			if strings.Contains(gs, "[sync.Mutex.Lock") && strings.Contains(gs, fn) {
				return true
			}
		}
		time.Sleep(time.Millisecond)
	}
	return false
}
