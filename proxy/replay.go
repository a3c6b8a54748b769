package proxy

import (
	"errors"
	"io"
	"sync"
)

// maxReplay bounds the request body the outbound side keeps to send again
// to another endpoint: a larger body is streamed once and its request is
// never retried.
const maxReplay = 64 << 10

// errNoReplay: the body cannot be sent again.
var errNoReplay = errors.New("proxy: request body too large or not yet read whole: it cannot be sent again")

// replayBody is a request body that can be read again from the start, as
// long as it was read whole and was at most maxReplay bytes. Attempts read
// it one after another; a reader of an earlier attempt that is still
// reading gets an error once a later attempt started.
type replayBody struct {
	src io.ReadCloser

	mu       sync.Mutex
	buf      []byte
	overflow bool // more than maxReplay bytes: not replayable
	eof      bool // src said io.EOF: buf is the whole body
	started  bool // src was read: an attempt began sending the body
	attempt  int
}

func newReplayBody(src io.ReadCloser) *replayBody { return &replayBody{src: src} }

// next is a reader for a new attempt, from the start of the body. The
// first attempt always gets one; later ones only if no attempt read any of
// it yet, or it is whole in the buffer.
func (b *replayBody) next() (io.ReadCloser, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.attempt > 0 && b.started && (b.overflow || !b.eof) {
		return nil, errNoReplay
	}
	b.attempt++
	return &replayReader{b: b, attempt: b.attempt}, nil
}

// take sets *rd to a reader for a new attempt and reports true, if another
// attempt can have the body: asking and taking in one step (next), so that
// an earlier attempt's reader cannot start reading in between.
func (b *replayBody) take(rd *io.ReadCloser) bool {
	r, err := b.next()
	if err != nil {
		return false
	}
	*rd = r
	return true
}

// Close closes the application's body.
func (b *replayBody) Close() error { return b.src.Close() }

type replayReader struct {
	b       *replayBody
	attempt int
	pos     int
}

var errReplaced = errors.New("proxy: request body reader replaced by a later attempt")

func (r *replayReader) Read(p []byte) (int, error) {
	b := r.b
	b.mu.Lock()
	if r.attempt != b.attempt {
		b.mu.Unlock()
		return 0, errReplaced
	}
	if r.pos < len(b.buf) {
		n := copy(p, b.buf[r.pos:])
		r.pos += n
		b.mu.Unlock()
		return n, nil
	}
	if b.eof {
		b.mu.Unlock()
		return 0, io.EOF
	}
	if b.overflow {
		// Past what was kept: only the first attempt reads here.
		b.mu.Unlock()
		return b.src.Read(p)
	}
	b.started = true
	b.mu.Unlock()
	// Only the current attempt's reader reads src, and attempts are one
	// after another, so src is never read by two at once.
	n, err := b.src.Read(p)
	b.mu.Lock()
	defer b.mu.Unlock()
	if len(b.buf)+n > maxReplay {
		b.overflow = true
		b.buf = nil
	} else {
		b.buf = append(b.buf, p[:n]...)
	}
	r.pos += n
	if errors.Is(err, io.EOF) {
		b.eof = true
	}
	return n, err
}

// Close does not close the application's body: another attempt may read
// it. The request's own body (the replayBody) is closed by the server.
func (r *replayReader) Close() error { return nil }
