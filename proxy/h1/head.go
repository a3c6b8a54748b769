package h1

import (
	"bytes"
	"errors"
	"fmt"

	"golang.org/x/net/http/httpguts"
)

// DefaultMaxHeadBytes bounds a request head when the caller sets no bound.
const DefaultMaxHeadBytes = 64 << 10

// ErrMore means the bytes seen so far are a valid prefix of a request head
// (or of a chunked-body element) that is not yet complete: read more, within
// the caller's deadline.
var ErrMore = errors.New("h1: need more bytes")

// SyntaxError is a violation of the strict grammar.
type SyntaxError struct {
	// Line is the line of the head or trailer section the violation is on,
	// counting the request line (or the last-chunk line) as 1; 0 when it
	// concerns the head as a whole.
	Line int
	// Problem says what was wrong, e.g. "bare LF".
	Problem string
}

func (e *SyntaxError) Error() string { return "h1: " + e.Reason() }

// Reason is the error without the package prefix, e.g. "line 3: bare LF":
// the text a 400 response can carry.
func (e *SyntaxError) Reason() string {
	if e.Line == 0 {
		return e.Problem
	}
	return fmt.Sprintf("line %d: %s", e.Line, e.Problem)
}

// Head is a request head as the strict parser accepted it. Its byte slices
// point into the buffer that was parsed.
type Head struct {
	Method []byte
	Target []byte // the request-target, exactly as sent
	Minor  int    // HTTP/1.Minor: 0 or 1
	// ContentLength is the Content-Length, or -1 when there is none.
	ContentLength int64
	Chunked       bool   // Transfer-Encoding: chunked
	Upgrade       bool   // an Upgrade field is present
	Len           int    // bytes of the head, the request line to the blank line included
	raw           []byte // the head's bytes, for the tests' Fields (export_test.go)
}

// Opaque reports whether what follows this head may not be HTTP/1 at all:
// a CONNECT tunnel, or a protocol switch the Upgrade field asks for.
func (h *Head) Opaque() bool { return h.Upgrade || string(h.Method) == "CONNECT" }

// ParseHead parses the request head at the start of b, accepting no more
// than max bytes for it (zero or less means DefaultMaxHeadBytes). It returns
// ErrMore when b is a valid but incomplete prefix; a *SyntaxError for
// anything outside the strict grammar. Bytes after the head are not looked
// at. To parse a head as it arrives without rescanning, use a Parser.
func ParseHead(b []byte, max int) (Head, error) {
	p := Parser{Max: max}
	return p.Parse(b)
}

// Parser parses one request head incrementally: call Parse with the bytes
// received so far, starting at the head, each call with the same bytes as
// before and perhaps more after them. Lines already accepted are not
// scanned again, so a head arriving a byte at a time costs linear time.
// Call Reset before parsing the next head.
type Parser struct {
	// Max bounds the head; zero or less means DefaultMaxHeadBytes.
	Max int

	off  int // start of the first line not yet accepted
	scan int // where the search for the next LF resumes
	line int // lines accepted

	methodEnd, targetEnd int // the request line's parts, as offsets
	minor                int
	contentLength        int64
	haveCL, haveTE       bool
	haveHost, upgrade    bool
}

// Reset readies p for the next head, keeping Max.
func (p *Parser) Reset() { *p = Parser{Max: p.Max} }

func (p *Parser) max() int {
	if p.Max <= 0 {
		return DefaultMaxHeadBytes
	}
	return p.Max
}

// Parse continues parsing the head at the start of b; see ParseHead. After
// an error other than ErrMore, p must be Reset before further use.
func (p *Parser) Parse(b []byte) (Head, error) {
	max := p.max()
	if p.scan > len(b) {
		return Head{}, errors.New("h1: Parse given fewer bytes than before")
	}
	for {
		i := bytes.IndexByte(b[p.scan:min(len(b), max)], '\n')
		if i < 0 {
			if len(b) >= max {
				return Head{}, &SyntaxError{Problem: fmt.Sprintf("head longer than %d bytes", max)}
			}
			p.scan = len(b)
			return Head{}, ErrMore
		}
		end := p.scan + i + 1
		line, problem := crlfLine(b[p.off:end])
		if problem != "" {
			return Head{}, &SyntaxError{Line: p.line + 1, Problem: problem}
		}
		p.line++
		p.off, p.scan = end, end
		if p.line == 1 {
			if err := p.requestLine(line); err != nil {
				return Head{}, err
			}
			continue
		}
		if len(line) == 0 {
			return p.finish(b[:end])
		}
		if err := p.field(line); err != nil {
			return Head{}, err
		}
	}
}

// crlfLine checks that l, a line including its LF, ends in CRLF and holds
// no other CR, and returns it without the CRLF. problem is empty when the
// line is valid. Head, chunk-size and trailer lines all go through it.
func crlfLine(l []byte) (line []byte, problem string) {
	if len(l) < 2 || l[len(l)-2] != '\r' {
		return nil, "bare LF"
	}
	l = l[:len(l)-2]
	if bytes.IndexByte(l, '\r') >= 0 {
		return nil, "bare CR"
	}
	return l, ""
}

func (p *Parser) requestLine(l []byte) error {
	bad := func(problem string) error { return &SyntaxError{Line: 1, Problem: problem} }
	if len(l) == 0 {
		return bad("empty line before the request line")
	}
	sp := bytes.IndexByte(l, ' ')
	if sp < 0 {
		return bad("request line without spaces")
	}
	if sp == 0 {
		return bad("request line starts with a space")
	}
	if k := tokenLen(l[:sp]); k < sp {
		return bad("invalid character " + quoteByte(l[k]) + " in method")
	}
	p.methodEnd = sp
	rest := l[sp+1:]
	sp = bytes.IndexByte(rest, ' ')
	switch {
	case sp < 0:
		return bad("request line without a version")
	case sp == 0:
		return bad("empty request-target")
	}
	for _, c := range rest[:sp] {
		if c < 0x21 || c > 0x7e {
			return bad("invalid character " + quoteByte(c) + " in request-target")
		}
	}
	p.targetEnd = p.methodEnd + 1 + sp
	switch v := rest[sp+1:]; string(v) {
	case "HTTP/1.1":
		p.minor = 1
	case "HTTP/1.0":
		p.minor = 0
	default:
		return bad(fmt.Sprintf("unsupported version %+q", v[:min(len(v), 16)]))
	}
	return nil
}

// splitField splits a field line (without CRLF) into its name and its value
// without surrounding OWS. problem is empty when the line is valid.
func splitField(l []byte) (name, value []byte, problem string) {
	if l[0] == ' ' || l[0] == '\t' {
		return nil, nil, "obs-fold (line starts with whitespace)"
	}
	i := tokenLen(l)
	switch {
	case i == len(l):
		return nil, nil, "field line without a colon"
	case l[i] == ' ' || l[i] == '\t':
		return nil, nil, "whitespace before the colon"
	case l[i] != ':':
		return nil, nil, "invalid character " + quoteByte(l[i]) + " in field name"
	case i == 0:
		return nil, nil, "empty field name"
	}
	name, value = l[:i], l[i+1:]
	for len(value) > 0 && (value[0] == ' ' || value[0] == '\t') {
		value = value[1:]
	}
	for len(value) > 0 && (value[len(value)-1] == ' ' || value[len(value)-1] == '\t') {
		value = value[:len(value)-1]
	}
	for _, c := range value {
		if !isValueByte[c] {
			if c == 0 {
				return nil, nil, "NUL in field value"
			}
			return nil, nil, fmt.Sprintf("control character 0x%02x in field value", c)
		}
	}
	return name, value, ""
}

func (p *Parser) field(l []byte) error {
	name, value, problem := splitField(l)
	if problem != "" {
		return &SyntaxError{Line: p.line, Problem: problem}
	}
	bad := func(problem string) error { return &SyntaxError{Line: p.line, Problem: problem} }
	switch {
	case equalFold(name, "content-length"):
		if p.haveCL {
			return bad("two Content-Length headers")
		}
		p.haveCL = true
		n, problem := parseContentLength(value)
		if problem != "" {
			return bad(problem)
		}
		p.contentLength = n
	case equalFold(name, "transfer-encoding"):
		if p.haveTE {
			return bad("two Transfer-Encoding headers")
		}
		p.haveTE = true
		if !equalFold(value, "chunked") {
			return bad(fmt.Sprintf("Transfer-Encoding %+q is not exactly chunked", value[:min(len(value), 32)]))
		}
	case equalFold(name, "host"):
		if p.haveHost {
			return bad("two Host headers")
		}
		p.haveHost = true
	case equalFold(name, "upgrade"):
		p.upgrade = true
	}
	return nil
}

func (p *Parser) finish(b []byte) (Head, error) {
	bad := func(problem string) error { return &SyntaxError{Problem: problem} }
	switch {
	case p.haveCL && p.haveTE:
		return Head{}, bad("both Content-Length and Transfer-Encoding")
	case p.haveTE && p.minor == 0:
		// net/http ignores Transfer-Encoding in HTTP/1.0 and would read
		// the chunks as the next request.
		return Head{}, bad("Transfer-Encoding in an HTTP/1.0 request")
	case !p.haveHost && p.minor == 1:
		return Head{}, bad("HTTP/1.1 request without Host")
	}
	h := Head{
		Method:        b[:p.methodEnd],
		Target:        b[p.methodEnd+1 : p.targetEnd],
		Minor:         p.minor,
		ContentLength: -1,
		Chunked:       p.haveTE,
		Upgrade:       p.upgrade,
		Len:           len(b),
		raw:           b,
	}
	if p.haveCL {
		h.ContentLength = p.contentLength
	}
	return h, nil
}

// parseContentLength accepts 1*DIGIT that fits an int64, nothing else.
func parseContentLength(v []byte) (int64, string) {
	if len(v) == 0 {
		return 0, "empty Content-Length"
	}
	var n int64
	for _, c := range v {
		if c < '0' || c > '9' {
			return 0, fmt.Sprintf("Content-Length %+q is not a decimal number", v[:min(len(v), 32)])
		}
		d := int64(c - '0')
		if n > (1<<63-1-d)/10 {
			return 0, "Content-Length overflows"
		}
		n = n*10 + d
	}
	return n, ""
}

// equalFold compares b with lower, which must be lower-case ASCII, in ASCII
// only, as HTTP compares field names and "chunked": bytes.EqualFold would
// also fold the Kelvin sign to 'k' and the long s to 's'.
func equalFold(b []byte, lower string) bool {
	if len(b) != len(lower) {
		return false
	}
	for i := range len(b) {
		c := b[i]
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		if c != lower[i] {
			return false
		}
	}
	return true
}

// tokenLen is the length of the token (RFC 9110 tchar) at the start of b,
// by the table net/http itself reads tokens with.
func tokenLen(b []byte) int {
	i := 0
	for i < len(b) && httpguts.IsTokenRune(rune(b[i])) {
		i++
	}
	return i
}

// isValueByte holds the bytes a field value may contain: HTAB, SP, visible
// ASCII and obs-text; no other control character.
var isValueByte = func() (t [256]bool) {
	t['\t'] = true
	for c := 0x20; c < 0x100; c++ {
		t[c] = c != 0x7f
	}
	return t
}()

// quoteByte names c for an error message in printable ASCII.
func quoteByte(c byte) string {
	if c > 0x20 && c < 0x7f {
		return fmt.Sprintf("%q", c)
	}
	return fmt.Sprintf("0x%02x", c)
}
