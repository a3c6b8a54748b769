package h1

import (
	"crypto/rand"
	"crypto/subtle"
	"errors"
	"io"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
)

// Config tunes a Gate.
type Config struct {
	// MaxHeadBytes bounds one request head (request line + headers + blank
	// line), and also the last chunk and trailer section of a chunked body.
	// Zero or less means DefaultMaxHeadBytes.
	MaxHeadBytes int
}

// initialBuffer is the gate's first buffer: a typical head, and what
// net/http itself reads at a time.
const initialBuffer = 4 << 10

type gateState uint8

const (
	gateHead     gateState = iota // parsing the next request head (after Gate.pass body bytes)
	gateChunked                   // scanning a chunked body
	gateOpaque                    // passing everything: no longer HTTP/1
	gateRejected                  // handing out the synthetic request, then EOF
	gateBroken                    // a body violated the grammar: Gate.err forever
)

// Gate is a net.Conn (wrapping the client connection) whose Read hands
// net/http the client's bytes only after each request head has been parsed
// and accepted by a strict HTTP/1.1 parser; body bytes then pass according
// to that head's framing (Content-Length n, or chunked, parsed strictly to
// find its end, trailers included; no body when neither is present), and
// the next head is gated again.
//
// On an invalid head the gate passes none of its bytes, and nothing after
// them: Read returns a synthetic "GET /" request for a host name only this
// gate knows, with "Connection: close", then io.EOF. net/http serves it in
// order, after any earlier pipelined request, and the handler recognises it
// with Rejected and answers 400 with the reason.
//
// A violation inside a chunked body cannot be answered that way, because
// the request it belongs to has already been handed to the handler: Read
// then returns the *SyntaxError, now and on every later call, so the
// handler's body read fails and net/http drops the connection.
//
// Read keeps partial state across short reads and across errors from the
// wrapped connection (net/http aborts its background read with a deadline
// in the past): bytes read are never lost, and head bytes are never handed
// out before the whole head is accepted. Write and the other methods are
// the wrapped connection's.
type Gate struct {
	net.Conn

	mu     sync.Mutex // serialises Read; guards everything below but the atomics
	max    int
	state  gateState
	buf    []byte // bytes read from Conn and not yet handed out: buf[r:w]
	r, w   int
	ok     int   // bytes at buf[r:] accepted and ready to hand out
	pass   int64 // bytes after those that may pass unexamined (body or chunk data)
	parser Parser
	chunk  chunkScanner
	err    error  // gateBroken's error
	synth  []byte // the rest of the synthetic request
	// pooled is the buffer from the pool (release.go), given back by
	// Release.
	pooled *[]byte

	opaque   atomic.Bool
	rejected atomic.Pointer[rejection]
}

// rejection is the head the gate refused, as Rejected reports it.
type rejection struct {
	host   string
	reason string
}

// NewGate wraps c; see Gate.
func NewGate(c net.Conn, cfg Config) *Gate {
	max := cfg.MaxHeadBytes
	if max <= 0 {
		max = DefaultMaxHeadBytes
	}
	return &Gate{Conn: c, max: max, parser: Parser{Max: max}}
}

// Rejected reports whether r is the request the gate substituted for an
// invalid head, and why (e.g. "line 3: bare LF", "two Content-Length
// headers"). The reason describes the client's bytes without quoting more
// than a few of them, and is fit for a 400 response. Safe to call from any
// goroutine.
func (g *Gate) Rejected(r *http.Request) (reason string, ok bool) {
	rej := g.rejected.Load()
	if rej == nil || subtle.ConstantTimeCompare([]byte(r.Host), []byte(rej.host)) != 1 {
		return "", false
	}
	return rej.reason, true
}

// Opaque reports whether the gate has stopped parsing: after a request with
// an Upgrade header (WebSocket, h2c) or the CONNECT method, every further
// byte passes untouched, because after a 101 the bytes are not HTTP. The
// handler must then make net/http close the connection after its response
// unless it switched protocols.
//
// Opaque turns true before the opaque request's head is handed to net/http,
// so the handler of that request always sees it. net/http reads ahead while
// a handler runs, so the handler of the request before a pipelined opaque
// one may see it too; closing that connection early is the safe error. Safe
// to call from any goroutine.
func (g *Gate) Opaque() bool { return g.opaque.Load() }

// Read implements net.Conn; see Gate.
func (g *Gate) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	for empty := 0; ; {
		if g.ok > 0 {
			n := copy(p, g.buf[g.r:g.r+g.ok])
			g.r += n
			g.ok -= n
			return n, nil
		}
		if g.pass > 0 {
			return g.readPass(p)
		}
		var err error
		switch g.state {
		case gateOpaque:
			if g.r < g.w {
				n := copy(p, g.buf[g.r:g.w])
				g.r += n
				return n, nil
			}
			return g.Conn.Read(p)
		case gateRejected:
			if len(g.synth) == 0 {
				return 0, io.EOF
			}
			n := copy(p, g.synth)
			g.synth = g.synth[n:]
			return n, nil
		case gateBroken:
			return 0, g.err
		case gateHead:
			err = g.head()
		case gateChunked:
			err = g.chunked()
		}
		if err == nil {
			continue
		}
		if !errors.Is(err, ErrMore) {
			return 0, err
		}
		n, err := g.fill()
		if err != nil {
			return 0, err
		}
		// A conn that returns neither bytes nor an error would spin here.
		if n == 0 {
			if empty++; empty >= 100 {
				return 0, io.ErrNoProgress
			}
		}
	}
}

// readPass hands out body bytes that need no examination: what is buffered
// first, then straight from the connection into p.
func (g *Gate) readPass(p []byte) (int, error) {
	if len(p) > int(min(g.pass, 1<<30)) {
		p = p[:g.pass]
	}
	if g.r < g.w {
		n := copy(p, g.buf[g.r:g.w])
		g.r += n
		g.pass -= int64(n)
		return n, nil
	}
	n, err := g.Conn.Read(p)
	g.pass -= int64(n)
	return n, err
}

// head parses the buffered head. It returns nil when the state moved on
// (accepted, switched to opaque, or rejected) and ErrMore when it needs
// more bytes.
func (g *Gate) head() error {
	h, err := g.parser.Parse(g.buf[g.r:g.w])
	if err != nil {
		if errors.Is(err, ErrMore) {
			return err
		}
		g.reject(err)
		return nil
	}
	g.parser.Reset()
	g.ok = h.Len
	switch {
	case h.Opaque():
		// Before the head is handed out: the handler of this request
		// must see it.
		g.opaque.Store(true)
		g.state = gateOpaque
	case h.Chunked:
		g.chunk.reset(g.max)
		g.state = gateChunked
	case h.ContentLength > 0:
		// The state stays gateHead: Read passes these first.
		g.pass = h.ContentLength
	}
	return nil
}

// chunked scans the next element of a chunked body.
func (g *Gate) chunked() error {
	frame, data, done, err := g.chunk.step(g.buf[g.r:g.w])
	if err != nil {
		if errors.Is(err, ErrMore) {
			return err
		}
		g.state, g.err = gateBroken, err
		g.r, g.w = 0, 0
		return err
	}
	g.ok, g.pass = frame, data
	if done {
		g.state = gateHead
	}
	return nil
}

// reject replaces the invalid head, and everything after it, with the
// synthetic request Rejected recognises.
func (g *Gate) reject(err error) {
	reason := err.Error()
	var se *SyntaxError
	if errors.As(err, &se) {
		reason = se.Reason()
	}
	// The host is drawn when needed: a client could only learn it from
	// this gate, whose connection now ends.
	host := "rejected-" + rand.Text() + ".h1.invalid"
	g.rejected.Store(&rejection{host: host, reason: reason})
	g.synth = []byte("GET / HTTP/1.1\r\nHost: " + host + "\r\nConnection: close\r\n\r\n")
	g.state = gateRejected
	g.r, g.w = 0, 0
}

// fill reads more of the connection into the buffer, growing it while a
// head or trailer needs more room, up to the bound.
func (g *Gate) fill() (int, error) {
	if g.r == g.w {
		g.r, g.w = 0, 0
	}
	if g.w == len(g.buf) {
		switch limit := max(g.max, maxChunkLine); {
		case g.r > 0:
			g.w = copy(g.buf, g.buf[g.r:g.w])
			g.r = 0
		case len(g.buf) < limit:
			nb := g.newBuf(min(max(2*len(g.buf), initialBuffer), limit))
			g.w = copy(nb, g.buf[g.r:g.w])
			g.r = 0
			g.buf = nb
		default:
			// The parsers stop at the bound before the buffer fills.
			return 0, errors.New("h1: gate buffer full")
		}
	}
	n, err := g.Conn.Read(g.buf[g.w:])
	g.w += n
	if n > 0 {
		// Keep what arrived; an error comes back on the next read.
		return n, nil
	}
	return 0, err
}

// CloseWrite shuts the writing side of the wrapped connection when it can
// (TCP, TLS): embedding hides the method, and net/http uses it to close
// gracefully after an error response while the client may still be sending.
func (g *Gate) CloseWrite() error {
	if cw, ok := g.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return errors.New("h1: the wrapped connection cannot close only its writing side")
}
