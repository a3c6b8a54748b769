package h1

import (
	"bytes"
	"fmt"
)

// maxChunkLine bounds a chunk-size line, extensions and CRLF included.
// net/http refuses lines of 4 KiB; real senders write a few hex digits and
// almost never an extension, and long extensions are a way to make the
// receiver work without sending data.
const maxChunkLine = 1024

type chunkState uint8

const (
	chunkSize    chunkState = iota // expecting a chunk-size line
	chunkEnd                       // expecting the CRLF after chunk data
	chunkTrailer                   // in the trailer section after the last chunk
	chunkDone                      // the body has ended
)

// chunkScanner finds the end of a chunked body under the strict grammar,
// element by element, so that framing is checked before it is passed on
// while chunk data streams through unexamined.
type chunkScanner struct {
	// max bounds the last-chunk line and the trailer section together
	// (never below maxChunkLine).
	max   int
	state chunkState
	scan  int // where the search for the next LF resumes, in this step's b
	off   int // trailer: start of the first line not yet accepted
	line  int // trailer: lines accepted, the last-chunk line being 1
}

func (c *chunkScanner) reset(max int) { *c = chunkScanner{max: max} }

func chunkError(format string, args ...any) error {
	return &SyntaxError{Problem: "chunked body: " + fmt.Sprintf(format, args...)}
}

// step examines b, the body bytes not yet passed on. It returns frame > 0
// when the first frame bytes of b are framing the grammar accepts: they may
// pass, followed by data bytes of chunk data that may pass unexamined;
// step is then called again with the bytes after those. done reports that
// the frame ended the body. ErrMore means b does not hold a whole element
// yet: call again with the same bytes and more. Any other error is a
// *SyntaxError, after which the body cannot be trusted.
func (c *chunkScanner) step(b []byte) (frame int, data int64, done bool, err error) {
	switch c.state {
	case chunkEnd:
		if len(b) < 2 {
			if len(b) == 1 && b[0] != '\r' {
				return 0, 0, false, chunkError("chunk data not followed by CRLF")
			}
			return 0, 0, false, ErrMore
		}
		if b[0] != '\r' || b[1] != '\n' {
			return 0, 0, false, chunkError("chunk data not followed by CRLF")
		}
		c.state = chunkSize
		return 2, 0, false, nil
	case chunkSize:
		if c.scan > len(b) {
			return 0, 0, false, chunkError("step given fewer bytes than before")
		}
		i := bytes.IndexByte(b[c.scan:min(len(b), maxChunkLine)], '\n')
		if i < 0 {
			if len(b) >= maxChunkLine {
				return 0, 0, false, chunkError("chunk-size line longer than %d bytes", maxChunkLine)
			}
			c.scan = len(b)
			return 0, 0, false, ErrMore
		}
		end := c.scan + i + 1
		l, problem := crlfLine(b[:end])
		if problem != "" {
			return 0, 0, false, chunkError("%s in chunk-size line", problem)
		}
		n, problem := parseChunkLine(l)
		if problem != "" {
			return 0, 0, false, chunkError("%s", problem)
		}
		if n > 0 {
			c.state, c.scan = chunkEnd, 0
			return end, n, false, nil
		}
		c.state, c.off, c.scan, c.line = chunkTrailer, end, end, 1
		return c.trailer(b)
	case chunkTrailer:
		if c.scan > len(b) {
			return 0, 0, false, chunkError("step given fewer bytes than before")
		}
		return c.trailer(b)
	}
	return 0, 0, false, chunkError("read past the end of the body")
}

// trailer continues the trailer section; b starts at the last-chunk line.
func (c *chunkScanner) trailer(b []byte) (frame int, data int64, done bool, err error) {
	limit := max(c.max, maxChunkLine)
	for {
		i := bytes.IndexByte(b[c.scan:min(len(b), limit)], '\n')
		if i < 0 {
			if len(b) >= limit {
				return 0, 0, false, chunkError("last chunk and trailer longer than %d bytes", limit)
			}
			c.scan = len(b)
			return 0, 0, false, ErrMore
		}
		end := c.scan + i + 1
		l, problem := crlfLine(b[c.off:end])
		if problem != "" {
			return 0, 0, false, chunkError("trailer line %d: %s", c.line+1, problem)
		}
		c.line++
		c.off, c.scan = end, end
		if len(l) == 0 {
			c.state, c.off, c.scan = chunkDone, 0, 0
			return end, 0, true, nil
		}
		name, _, problem := splitField(l)
		if problem != "" {
			return 0, 0, false, chunkError("trailer line %d: %s", c.line, problem)
		}
		// Framing and routing fields have no business in a trailer; a
		// recipient that merged them would reframe or reroute.
		for _, f := range [...]string{"content-length", "transfer-encoding", "host"} {
			if equalFold(name, f) {
				return 0, 0, false, chunkError("trailer line %d: %s in a trailer", c.line, name)
			}
		}
	}
}

// parseChunkLine parses chunk-size *( ";" token [ "=" ( token /
// quoted-string ) ] ), without whitespace anywhere: net/http reads a
// chunk-size followed by whitespace as an error, and nothing needs it.
func parseChunkLine(l []byte) (int64, string) {
	var n uint64
	i := 0
	for ; i < len(l); i++ {
		v, ok := hexValue(l[i])
		if !ok {
			break
		}
		if i == 16 {
			return 0, "chunk size longer than 16 hex digits"
		}
		n = n<<4 | uint64(v)
	}
	if i == 0 {
		return 0, "chunk size is not a hex number"
	}
	if n > 1<<63-1 {
		return 0, "chunk size overflows"
	}
	rest := l[i:]
	for len(rest) > 0 {
		if rest[0] != ';' {
			return 0, "invalid character " + quoteByte(rest[0]) + " after chunk size"
		}
		rest = rest[1:]
		k := tokenLen(rest)
		if k == 0 {
			return 0, "empty chunk extension name"
		}
		rest = rest[k:]
		if len(rest) == 0 || rest[0] != '=' {
			continue
		}
		rest = rest[1:]
		if len(rest) > 0 && rest[0] == '"' {
			k = quotedLen(rest)
			if k < 0 {
				return 0, "malformed quoted chunk extension value"
			}
		} else if k = tokenLen(rest); k == 0 {
			return 0, "empty chunk extension value"
		}
		rest = rest[k:]
	}
	return int64(n), ""
}

func hexValue(c byte) (byte, bool) {
	switch {
	case '0' <= c && c <= '9':
		return c - '0', true
	case 'a' <= c && c <= 'f':
		return c - 'a' + 10, true
	case 'A' <= c && c <= 'F':
		return c - 'A' + 10, true
	}
	return 0, false
}

// quotedLen returns the length of the quoted-string at the start of b
// (which starts with a double quote), or -1 if it is malformed.
func quotedLen(b []byte) int {
	for i := 1; i < len(b); i++ {
		switch c := b[i]; {
		case c == '"':
			return i + 1
		case c == '\\':
			i++
			if i == len(b) || !isValueByte[b[i]] {
				return -1
			}
		case !isValueByte[c]:
			return -1
		}
	}
	return -1
}
