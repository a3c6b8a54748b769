package proxy

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/textproto"
	"sync"
	"syscall"
	"time"

	"golang.org/x/net/http/httpguts"
)

// directTransport sends the inbound side's plain requests to the local
// application over HTTP/1.1 connections it keeps, writing each request
// and reading its response in the caller's goroutine. http.Transport
// hands every request to a writer goroutine and its response back from a
// reader goroutine, per connection; on a request of about 100 bytes those
// hand-offs, and the Transport's bookkeeping around them, cost more than
// the request (PERF-NOTES, docs/benchmarks.md, "What was tuned").
//
// Only requests that need nothing else are sent this way: HTTP/1.1, a
// method that may be sent twice (GET, HEAD, OPTIONS, TRACE), no body, no
// upgrade, no Expect, no trailers. Everything else is fallback's. What goes
// on the wire is the same: Request.Write is the writer http.Transport
// uses.
//
// Without a reader goroutine, what arrives on a kept connection while it
// is idle is noticed when the connection is taken again (quiet): bytes the
// application sent unasked, which would otherwise be read as the next
// request's response, and that request may be another client's; or the
// application's close. Either way the connection is closed, not used. A
// close that comes between that look and the request is noticed only when
// the request fails: then it is sent again, once, on a new connection,
// which is why only requests that may be sent twice go this way
// (http.Transport, whose reader notices at once, sends any request).
type directTransport struct {
	dial     func(ctx context.Context, network, addr string) (net.Conn, error)
	fallback http.RoundTripper
	// maxIdle bounds the connections kept per address; idleTimeout
	// closes one unused for that long.
	maxIdle     int
	idleTimeout time.Duration

	mu   sync.Mutex
	idle map[string][]*directConn
}

// maxInformational bounds the 1xx responses read before the final one,
// as http.Transport does.
const maxInformational = 5

func newDirectTransport(dial func(context.Context, string, string) (net.Conn, error), fallback http.RoundTripper, maxIdle int, idleTimeout time.Duration) *directTransport {
	if dial == nil {
		var d net.Dialer
		dial = d.DialContext
	}
	return &directTransport{dial: dial, fallback: fallback, maxIdle: maxIdle, idleTimeout: idleTimeout, idle: map[string][]*directConn{}}
}

// directConn is one kept connection to the application.
type directConn struct {
	t    *directTransport
	addr string
	conn net.Conn
	br   *bufio.Reader
	bw   *bufio.Writer
	// idleSince is when it was put back (zero while in use); the timer
	// closes it once idle for idleTimeout. Both are guarded by t.mu.
	idleSince time.Time
	timer     *time.Timer
	closed    bool
}

// simple reports whether r can go the direct way. What http.Transport
// refuses before writing (a header name or value that is not valid) is
// left to it, so that it is refused as it always was.
func simple(r *http.Request) bool {
	if r.ProtoMajor != 1 || r.ProtoMinor != 1 ||
		(r.Body != nil && r.Body != http.NoBody) || r.ContentLength != 0 ||
		len(r.TransferEncoding) != 0 || len(r.Trailer) != 0 || r.Close ||
		r.URL == nil || r.URL.Scheme != "http" || r.URL.Host == "" ||
		len(r.Header["Upgrade"]) != 0 || len(r.Header["Expect"]) != 0 || len(r.Header["Connection"]) != 0 ||
		!replayable(r) {
		return false
	}
	for k, vv := range r.Header {
		if !httpguts.ValidHeaderFieldName(k) {
			return false
		}
		for _, v := range vv {
			if !httpguts.ValidHeaderFieldValue(v) {
				return false
			}
		}
	}
	return true
}

// RoundTrip implements http.RoundTripper.
func (t *directTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	if !simple(r) {
		return t.fallback.RoundTrip(r)
	}
	ctx := r.Context()
	for attempt := 0; ; attempt++ {
		var c *directConn
		reused := false
		if attempt == 0 {
			c, reused = t.get(r.URL.Host)
		}
		if c == nil {
			conn, err := t.dial(ctx, "tcp", r.URL.Host)
			if err != nil {
				// Unwrapped: the caller tells a failed dial (nothing
				// reached the application) by its *net.OpError.
				return nil, err
			}
			c = t.newConn(r.URL.Host, conn)
		}
		resp, err, retry := c.exchange(ctx, r)
		if err == nil {
			return resp, nil
		}
		c.close()
		// A kept connection the application closed while it was idle
		// fails before any answer: once more, on a new connection, as
		// http.Transport does for requests that may be sent twice (the
		// only ones sent this way).
		if !retry || !reused {
			if ctx.Err() != nil {
				return nil, fmt.Errorf("proxy: %s %s: %w", r.Method, r.URL.Host, context.Cause(ctx))
			}
			return nil, fmt.Errorf("proxy: %s to the application at %s: %w", r.Method, r.URL.Host, err)
		}
	}
}

// exchange writes r and reads its response. retry says the connection
// failed before anything of a response was read.
func (c *directConn) exchange(ctx context.Context, r *http.Request) (resp *http.Response, err error, retry bool) {
	// A request given up on (its client went away) must not wait for the
	// application: the deadline wakes whatever this side is blocked on,
	// and the connection is not kept.
	stop := context.AfterFunc(ctx, func() { _ = c.conn.SetDeadline(time.Unix(1, 0)) })
	if err := r.Write(c.bw); err != nil {
		stop()
		return nil, err, false
	}
	if err := c.bw.Flush(); err != nil {
		stop()
		return nil, err, true
	}
	trace := httptrace.ContextClientTrace(ctx)
	for n := 0; ; n++ {
		resp, err = http.ReadResponse(c.br, r)
		if err != nil {
			stop()
			return nil, err, n == 0 && ctx.Err() == nil && (errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || isReset(err))
		}
		if resp.StatusCode >= 200 || resp.StatusCode < 100 {
			break
		}
		if resp.StatusCode == http.StatusSwitchingProtocols || n+1 >= maxInformational {
			// Nobody asked to switch: the bytes after it are not HTTP.
			stop()
			resp.Body.Close()
			return nil, fmt.Errorf("unexpected %s from the application", resp.Status), false
		}
		if trace != nil && trace.Got1xxResponse != nil {
			if err := trace.Got1xxResponse(resp.StatusCode, textproto.MIMEHeader(resp.Header)); err != nil {
				stop()
				return nil, err, false
			}
		}
	}
	resp.Body = &directBody{rc: resp.Body, c: c, stop: stop, keep: !resp.Close}
	return resp, nil, false
}

// replayable is part of http.Request's rule for sending a request twice
// (the body is checked apart): a method that is safe to repeat. Requests
// with an idempotency key, which it also repeats, go to the fallback.
func replayable(r *http.Request) bool {
	switch r.Method {
	case http.MethodGet, http.MethodHead, http.MethodOptions, http.MethodTrace:
		return true
	}
	return false
}

func isReset(err error) bool {
	var op *net.OpError
	return errors.As(err, &op) && !op.Timeout()
}

// directBody returns its connection once the response was read to its
// end, and closes it otherwise.
type directBody struct {
	rc   io.ReadCloser
	c    *directConn
	stop func() bool
	keep bool
	eof  bool
	done bool
}

func (b *directBody) Read(p []byte) (int, error) {
	if b.done {
		return 0, errors.New("proxy: read on a closed response body")
	}
	n, err := b.rc.Read(p)
	if err == io.EOF {
		b.eof = true
	}
	return n, err
}

func (b *directBody) Close() error {
	if b.done {
		return nil
	}
	b.done = true
	// stop false: the request's context ended and set the deadline.
	stopped := b.stop()
	if !stopped || !b.eof || !b.keep {
		// Closed first: closing a response body not read to its end
		// would otherwise read (and discard) the rest of it.
		b.c.close()
		_ = b.rc.Close()
		return nil
	}
	err := b.rc.Close()
	if err == nil && b.c.br.Buffered() == 0 {
		b.c.t.put(b.c)
	} else {
		// Bytes after the response: not a connection to reuse.
		b.c.close()
	}
	return err
}

func (t *directTransport) newConn(addr string, conn net.Conn) *directConn {
	return &directConn{t: t, addr: addr, conn: conn, br: bufio.NewReaderSize(conn, 4096), bw: bufio.NewWriterSize(conn, 4096)}
}

// get takes the most recently used kept connection to addr on which
// nothing has arrived while it was idle, if any; the others are closed.
func (t *directTransport) get(addr string) (*directConn, bool) {
	for {
		t.mu.Lock()
		cs := t.idle[addr]
		if len(cs) == 0 {
			t.mu.Unlock()
			return nil, false
		}
		c := cs[len(cs)-1]
		cs[len(cs)-1] = nil
		t.idle[addr] = cs[:len(cs)-1]
		c.idleSince = time.Time{}
		t.mu.Unlock()
		if c.quiet() {
			return c, true
		}
		c.close()
	}
}

// quiet reports whether nothing, not even a close, has arrived on c since
// its last response was read to its end: a look at the socket that does
// not wait and leaves what it sees in place (MSG_PEEK|MSG_DONTWAIT). A
// connection that cannot be looked at is not quiet.
func (c *directConn) quiet() bool {
	sc, ok := c.conn.(syscall.Conn)
	if !ok {
		return false
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return false
	}
	var b [1]byte
	var perr error
	if err := rc.Read(func(fd uintptr) bool {
		_, _, perr = syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		return true
	}); err != nil {
		return false
	}
	// EAGAIN: nothing to read. No error: a byte, or the end of the stream.
	return perr == syscall.EAGAIN
}

// put keeps c for the next request, or closes it when enough are kept.
func (t *directTransport) put(c *directConn) {
	t.mu.Lock()
	if c.closed || len(t.idle[c.addr]) >= t.maxIdle {
		t.mu.Unlock()
		c.close()
		return
	}
	c.idleSince = time.Now()
	t.idle[c.addr] = append(t.idle[c.addr], c)
	if c.timer == nil {
		// One timer per connection, re-armed only when it fires early.
		c.timer = time.AfterFunc(t.idleTimeout, c.expire)
	}
	t.mu.Unlock()
}

// expire closes c if it has been idle for idleTimeout.
func (c *directConn) expire() {
	t := c.t
	t.mu.Lock()
	if c.closed {
		t.mu.Unlock()
		return
	}
	if c.idleSince.IsZero() || time.Since(c.idleSince) < t.idleTimeout {
		wait := t.idleTimeout
		if !c.idleSince.IsZero() {
			wait -= time.Since(c.idleSince)
		}
		c.timer.Reset(wait)
		t.mu.Unlock()
		return
	}
	t.removeLocked(c)
	t.mu.Unlock()
	c.close()
}

func (t *directTransport) removeLocked(c *directConn) {
	cs := t.idle[c.addr]
	for i, x := range cs {
		if x == c {
			t.idle[c.addr] = append(cs[:i], cs[i+1:]...)
			break
		}
	}
	if len(t.idle[c.addr]) == 0 {
		delete(t.idle, c.addr)
	}
}

func (c *directConn) close() {
	c.t.mu.Lock()
	already := c.closed
	c.closed = true
	if c.timer != nil {
		c.timer.Stop()
	}
	c.t.mu.Unlock()
	if !already {
		_ = c.conn.Close()
	}
}

// CloseIdleConnections closes the kept connections, and the fallback's.
func (t *directTransport) CloseIdleConnections() {
	t.mu.Lock()
	var cs []*directConn
	for _, l := range t.idle {
		cs = append(cs, l...)
	}
	t.idle = map[string][]*directConn{}
	t.mu.Unlock()
	for _, c := range cs {
		c.close()
	}
	if ci, ok := t.fallback.(interface{ CloseIdleConnections() }); ok {
		ci.CloseIdleConnections()
	}
}

// withDirect sends t's plain HTTP/1.1 requests the direct way, with the
// same dialer and idle limits as t.h1, which takes the others.
func (t *httpTransports) withDirect() *httpTransports {
	t.direct = newDirectTransport(t.h1.DialContext, t.h1, t.h1.MaxIdleConnsPerHost, t.h1.IdleConnTimeout)
	return t
}
