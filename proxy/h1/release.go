package h1

import (
	"net"
	"sync"
)

// bufs are gates' first buffers (initialBuffer bytes), reused across
// connections: a proxy that sees many short connections would otherwise
// allocate one per connection.
var bufs = sync.Pool{New: func() any { b := make([]byte, initialBuffer); return &b }}

// newBuf returns a buffer of n bytes for fill; the first of the gate's,
// of initialBuffer bytes, from the pool, kept until Release.
func (g *Gate) newBuf(n int) []byte {
	if n == initialBuffer && g.pooled == nil {
		g.pooled = bufs.Get().(*[]byte)
		return *g.pooled
	}
	return make([]byte, n)
}

// Release gives the gate's buffer back for other gates once its connection
// is done. A Read in progress finishes first (Release waits for it); every
// later Read fails with net.ErrClosed and never touches a buffer again. The
// bytes a released buffer still holds are never handed out: a gate hands
// out only what it read into its buffer itself.
func (g *Gate) Release() {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.buf, g.r, g.w, g.ok, g.pass, g.synth = nil, 0, 0, 0, 0, nil
	g.state, g.err = gateBroken, net.ErrClosed
	if g.pooled != nil {
		bufs.Put(g.pooled)
		g.pooled = nil
	}
}
