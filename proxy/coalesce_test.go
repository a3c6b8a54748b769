package proxy

import (
	"bytes"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// gatedConn counts the writes that reach the connection, and holds each
// one until released.
type gatedConn struct {
	net.Conn
	writes  atomic.Int32
	started chan struct{} // one token per write that began
	release chan struct{} // one token lets one write through; closed: all
	fail    error
}

func (g *gatedConn) Write(b []byte) (int, error) {
	g.writes.Add(1)
	g.started <- struct{}{}
	<-g.release
	if g.fail != nil {
		return 0, g.fail
	}
	return g.Conn.Write(b)
}

func tcpPair(t *testing.T) (client, server net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, _ := ln.Accept()
		accepted <- c
	}()
	client, err = net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	server = <-accepted
	if server == nil {
		t.Fatal("accept failed")
	}
	t.Cleanup(func() {
		client.Close()
		server.Close()
	})
	return client, server
}

// Everything written arrives, in order, whatever the sizes, and Close
// sends what is pending before the end of the stream.
func TestCoalescerDeliversInOrder(t *testing.T) {
	tests := []struct {
		name  string
		sizes []int
	}{
		{"small frames", []int{9, 64, 9, 9, 100, 1, 13}},
		{"one byte", []int{1}},
		{"larger than the bound", []int{10, coalesceMax + 1, 3, 2 * coalesceMax, 7}},
		{"random", func() []int {
			r := rand.New(rand.NewPCG(1, 2))
			s := make([]int, 500)
			for i := range s {
				s[i] = 1 + r.IntN(20000)
			}
			return s
		}()},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a, b := tcpPair(t)
			w := newCoalescer(a)
			var want bytes.Buffer
			got := make(chan []byte, 1)
			go func() {
				all, _ := io.ReadAll(b)
				got <- all
			}()
			for i, n := range tt.sizes {
				chunk := bytes.Repeat([]byte{byte(i)}, n)
				want.Write(chunk)
				if m, err := w.Write(chunk); m != n || err != nil {
					t.Fatalf("Write %d: %d, %v", i, m, err)
				}
			}
			if err := w.Close(); err != nil {
				t.Fatalf("Close: %v", err)
			}
			select {
			case g := <-got:
				if !bytes.Equal(g, want.Bytes()) {
					t.Fatalf("received %d bytes, want %d, equal prefix %d", len(g), want.Len(), commonPrefix(g, want.Bytes()))
				}
			case <-time.After(10 * time.Second):
				t.Fatal("the reader never saw the end of the stream")
			}
			if _, err := w.Write([]byte("late")); !errors.Is(err, net.ErrClosed) {
				t.Errorf("Write after Close: %v, want net.ErrClosed", err)
			}
			if err := w.Close(); !errors.Is(err, net.ErrClosed) {
				t.Errorf("second Close: %v, want net.ErrClosed", err)
			}
		})
	}
}

func commonPrefix(a, b []byte) int {
	n := 0
	for n < len(a) && n < len(b) && a[n] == b[n] {
		n++
	}
	return n
}

// Writes made while the connection is busy leave together, in one write,
// and a Write that would pend more than coalesceMax waits for the writer.
func TestCoalescerCoalescesAndBounds(t *testing.T) {
	a, b := tcpPair(t)
	g := &gatedConn{Conn: a, started: make(chan struct{}, 16), release: make(chan struct{})}
	w := newCoalescer(g)
	received := make(chan []byte, 1)
	go func() {
		all, _ := io.ReadAll(b)
		received <- all
	}()
	var want bytes.Buffer
	write := func(p []byte) {
		t.Helper()
		want.Write(p)
		if _, err := w.Write(p); err != nil {
			t.Fatal(err)
		}
	}
	write([]byte("headers"))
	<-g.started // the writer holds the first write
	for range 10 {
		write([]byte("frame"))
	}
	// Filling up to the bound does not block; one byte more does.
	write(bytes.Repeat([]byte("x"), coalesceMax-50))
	blocked := make(chan error, 1)
	go func() {
		_, err := w.Write(bytes.Repeat([]byte("y"), 100))
		blocked <- err
	}()
	select {
	case err := <-blocked:
		t.Fatalf("a Write beyond the bound returned (%v) while the writer was held", err)
	case <-time.After(100 * time.Millisecond):
	}
	close(g.release)
	if err := <-blocked; err != nil {
		t.Fatal(err)
	}
	want.Write(bytes.Repeat([]byte("y"), 100))
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if got := <-received; !bytes.Equal(got, want.Bytes()) {
		t.Fatalf("received %d bytes, want %d", len(got), want.Len())
	}
	// The first write, the 11 writes pending behind it together, and the
	// one that waited: at most 3.
	if n := g.writes.Load(); n > 3 {
		t.Errorf("%d writes reached the connection, want at most 3", n)
	}
}

// A failed write is returned by the next Write and by Close, and the
// writer stops.
func TestCoalescerReportsFailure(t *testing.T) {
	a, _ := tcpPair(t)
	boom := errors.New("boom")
	g := &gatedConn{Conn: a, started: make(chan struct{}, 16), release: make(chan struct{}), fail: boom}
	close(g.release)
	w := newCoalescer(g)
	if _, err := w.Write([]byte("accepted")); err != nil {
		t.Fatalf("first Write: %v", err)
	}
	<-g.started
	select {
	case <-w.done:
	case <-time.After(5 * time.Second):
		t.Fatal("the writer did not stop after a failed write")
	}
	if _, err := w.Write([]byte("more")); !errors.Is(err, boom) {
		t.Fatalf("Write after a failed write: %v, want %v", err, boom)
	}
	if n := g.writes.Load(); n != 1 {
		t.Errorf("%d writes reached the connection after it failed once", n)
	}
	w.Close()
}

// A peer that never reads cannot hold Close for longer than
// coalesceCloseWait, and the writer stops.
func TestCoalescerCloseIsBounded(t *testing.T) {
	a, b := net.Pipe() // unbuffered: a write waits for a read that never comes
	defer b.Close()
	w := newCoalescer(a)
	if _, err := w.Write([]byte("never read")); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	w.Close()
	if d := time.Since(start); d > coalesceCloseWait+2*time.Second {
		t.Fatalf("Close took %v", d)
	}
	select {
	case <-w.done:
	default:
		t.Fatal("Close returned with the writer still running")
	}
}

// Concurrent writers: each Write is whole in the stream.
func TestCoalescerConcurrentWrites(t *testing.T) {
	a, b := tcpPair(t)
	w := newCoalescer(a)
	const writers, per = 8, 200
	received := make(chan []byte, 1)
	go func() {
		all, _ := io.ReadAll(b)
		received <- all
	}()
	var wg sync.WaitGroup
	for i := range writers {
		wg.Go(func() {
			rec := bytes.Repeat([]byte{'a' + byte(i)}, 32)
			for range per {
				if _, err := w.Write(rec); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	w.Close()
	got := <-received
	if len(got) != writers*per*32 {
		t.Fatalf("received %d bytes, want %d", len(got), writers*per*32)
	}
	for i := 0; i < len(got); i += 32 {
		if !bytes.Equal(got[i:i+32], bytes.Repeat(got[i:i+1], 32)) {
			t.Fatalf("record at %d was split: %q", i, got[i:i+32])
		}
	}
}
