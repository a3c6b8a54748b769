package proxy

import (
	"net"
	"sync"
	"time"
)

// coalescer gathers a connection's writes into fewer TLS records and
// system calls. net/http's HTTP/2 server flushes after every frame when
// nothing else is queued, so a response whose handler produced headers
// and body at once still leaves as a HEADERS write and a DATA write: two
// TLS records, two system calls (PERF-NOTES: writes are the largest part
// of the server side's CPU).
//
// Write only appends to a buffer and wakes the coalescer's writer, which
// sends all that was appended by the time it runs in one Write. It runs as
// soon as the scheduler gets to it: nothing waits on a timer, and a
// response is delayed at most by the goroutines already runnable.
//
// What Write accepted is written in order, or the connection failed: the
// failure is returned by the next Write, and by Close. Close sends what is
// pending (a GOAWAY, say) first, for up to coalesceCloseWait.
type coalescer struct {
	net.Conn

	mu   sync.Mutex
	cond sync.Cond // broadcast when pending shrinks or the writer stops
	// pending is what Write accepted and the writer has not taken.
	pending []byte
	err     error
	closed  bool

	wake chan struct{}
	done chan struct{}
}

const (
	// coalesceMax bounds what is pending: a Write beyond it waits for
	// the writer, as a Write on the connection itself would.
	coalesceMax = 64 << 10
	// coalesceCloseWait bounds how long Close waits for pending bytes to
	// leave before it closes the connection under them.
	coalesceCloseWait = time.Second
)

// newCoalescer starts c's writer; it stops with Close.
func newCoalescer(c net.Conn) *coalescer {
	w := &coalescer{Conn: c, wake: make(chan struct{}, 1), done: make(chan struct{})}
	w.cond.L = &w.mu
	go w.run()
	return w
}

func (w *coalescer) Write(b []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for w.err == nil && !w.closed && len(w.pending) > 0 && len(w.pending)+len(b) > coalesceMax {
		w.cond.Wait()
	}
	switch {
	case w.err != nil:
		return 0, w.err
	case w.closed:
		return 0, net.ErrClosed
	}
	w.pending = append(w.pending, b...)
	select {
	case w.wake <- struct{}{}:
	default:
	}
	return len(b), nil
}

// run is the writer: it writes what is pending until Close, or until a
// write fails.
func (w *coalescer) run() {
	defer close(w.done)
	var buf []byte
	for range w.wake {
		w.mu.Lock()
		buf, w.pending = w.pending, buf[:0]
		closed := w.closed
		w.mu.Unlock()
		var err error
		if len(buf) > 0 {
			_, err = w.Conn.Write(buf)
		}
		w.mu.Lock()
		if err != nil && w.err == nil {
			w.err = err
		}
		// More may have come while the write was under way.
		more := len(w.pending) > 0
		w.cond.Broadcast()
		w.mu.Unlock()
		if err != nil || (closed && !more) {
			return
		}
		if more {
			select {
			case w.wake <- struct{}{}:
			default:
			}
		}
	}
}

// Close sends what is pending, then closes the connection.
func (w *coalescer) Close() error {
	w.mu.Lock()
	if w.closed {
		w.mu.Unlock()
		return net.ErrClosed
	}
	w.closed = true
	w.cond.Broadcast()
	w.mu.Unlock()
	select {
	case w.wake <- struct{}{}:
	default:
	}
	t := time.NewTimer(coalesceCloseWait)
	select {
	case <-w.done:
	case <-t.C:
	}
	t.Stop()
	err := w.Conn.Close()
	// A writer stuck on a peer that does not read fails now.
	<-w.done
	return err
}
