package meshproxy

import (
	"bytes"
	"io"
	"sync"
)

// lineCopy copies whole lines to w, best effort: the audit writer batches
// its output with bufio, whose flushes may end mid-line, and the proxy's
// own log lines share standard output, so each complete line goes out in
// one Write (the kubelet keeps a write of a line together) and a partial
// one waits for its end. Errors are dropped: the file is the audit log,
// the copy on standard output is for `kubectl logs` and `meshctl audit
// logs`, and must never fail the file's writes.
type lineCopy struct {
	mu      sync.Mutex
	w       io.Writer
	partial []byte
}

// maxPartial bounds a line waiting for its end; a longer one is written
// as it is (no audit record is near it).
const maxPartial = 1 << 20

func (l *lineCopy) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	rest := p
	for {
		i := bytes.IndexByte(rest, '\n')
		if i < 0 {
			break
		}
		if len(l.partial) > 0 {
			l.partial = append(l.partial, rest[:i+1]...)
			_, _ = l.w.Write(l.partial)
			l.partial = l.partial[:0]
		} else {
			_, _ = l.w.Write(rest[:i+1])
		}
		rest = rest[i+1:]
	}
	l.partial = append(l.partial, rest...)
	if len(l.partial) > maxPartial {
		_, _ = l.w.Write(l.partial)
		l.partial = l.partial[:0]
	}
	return len(p), nil
}
