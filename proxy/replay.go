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
var errNoReplay = errors.New("proxy: request body larger than what is kept: it cannot be sent again")

// replayBody is a request body that can be read again from the start, as
// long as it is at most maxReplay bytes: every byte read from the
// application is kept, so a later attempt reads what earlier ones read,
// then goes on reading the application's body where they stopped.
// Attempts read it one after another; a reader of an earlier attempt that
// is still reading gets an error once a later attempt started.
//
// An earlier attempt may be inside src.Read when a later one starts (its
// HTTP/2 body writer runs on its own, and the answer that made us try
// again can come back before it finished): the bytes that read returns
// are kept for the later attempt, which waits for it rather than read src
// at the same time. Without that, whether a request whose endpoint did
// not deliver it was tried again depended on how far its body's writer
// had got, which on a loaded machine was often "part of the way".
type replayBody struct {
	src io.ReadCloser

	mu       sync.Mutex
	idle     *sync.Cond // signalled when a read of src ends
	buf      []byte
	total    int  // bytes read from src so far
	overflow bool // more than maxReplay bytes: buf was dropped, no replay
	eof      bool // src said io.EOF: buf is the whole body
	reading  bool // a read of src is under way
	attempt  int
}

func newReplayBody(src io.ReadCloser) *replayBody {
	b := &replayBody{src: src}
	b.idle = sync.NewCond(&b.mu)
	return b
}

// next is a reader for a new attempt, from the start of the body. The
// first attempt always gets one; later ones as long as every byte read so
// far is kept.
func (b *replayBody) next() (io.ReadCloser, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.attempt > 0 && b.overflow {
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
	for {
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
		if r.pos < b.total {
			// The bytes this reader has not had were dropped when the
			// body outgrew maxReplay: it must not go on with a hole.
			b.mu.Unlock()
			return 0, errNoReplay
		}
		if b.eof {
			b.mu.Unlock()
			return 0, io.EOF
		}
		if !b.reading {
			break
		}
		// An earlier attempt's read of src is under way: its bytes come
		// to buf.
		b.idle.Wait()
	}
	b.reading = true
	b.mu.Unlock()
	n, err := b.src.Read(p)
	b.mu.Lock()
	defer b.mu.Unlock()
	b.reading = false
	b.idle.Broadcast()
	b.total += n
	switch {
	case b.overflow:
	case len(b.buf)+n > maxReplay:
		b.overflow = true
		b.buf = nil
	default:
		b.buf = append(b.buf, p[:n]...)
	}
	if errors.Is(err, io.EOF) {
		b.eof = true
	}
	if r.attempt != b.attempt {
		// Replaced while reading: the bytes are kept for the attempt
		// that replaced it.
		return 0, errReplaced
	}
	r.pos += n
	return n, err
}

// Close does not close the application's body: another attempt may read
// it. The request's own body (the replayBody) is closed by the server.
func (r *replayReader) Close() error { return nil }
