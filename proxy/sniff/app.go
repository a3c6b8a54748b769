package sniff

import (
	"errors"

	"golang.org/x/net/http/httpguts"
)

// App classifies the first bytes a client sends on an accepted connection,
// inside mTLS or in plaintext: HTTP2 for the HTTP/2 connection preface,
// HTTP1 for anything an HTTP/1 server might read as a request line, Unknown
// for bytes that cannot start an HTTP request, and ErrMore while it cannot
// tell yet.
//
// It leans towards HTTP on purpose. A stream classified HTTP1 that is not
// valid HTTP is refused by the proxy's strict parser; a stream classified
// Unknown is passed to the application as opaque bytes with one decision
// for the whole connection. So anything a lenient application server could
// parse as a request (an unknown method such as PURGE, a lower-case "get",
// leading blank lines, a tab for a space) must be HTTP1 here, or the
// request would reach the application undecided.
//
// The rule: after optional whitespace, a token (the method), then a space
// or tab, then a request target that starts like one: "/", "*", or an
// absolute URI "http://" or "https://"; or a token that is a standard
// method in any case, whatever follows it.
//
// It looks at no more than MaxUndecided bytes: what is still undecided
// there is HTTP1, for the strict parser to judge. That bounds the work of
// a caller that asks again as each byte arrives.
func App(b []byte) (Protocol, error) {
	p, err := app(b[:min(len(b), MaxUndecided)])
	if errors.Is(err, ErrMore) && len(b) >= MaxUndecided {
		return HTTP1, nil
	}
	return p, err
}

// MaxUndecided bounds the bytes App reads to decide.
const MaxUndecided = 1024

func app(b []byte) (Protocol, error) {
	if len(b) == 0 {
		return Unknown, ErrMore
	}
	if n := min(len(b), len(H2Preface)); string(b[:n]) == H2Preface[:n] {
		if n < len(H2Preface) {
			return Unknown, ErrMore
		}
		return HTTP2, nil
	}
	i := 0
	for i < len(b) && isSpace(b[i]) {
		i++
	}
	if i == len(b) {
		return Unknown, ErrMore
	}
	start := i
	for i < len(b) && httpguts.IsTokenRune(rune(b[i])) {
		i++
	}
	method := b[start:i]
	if i == len(b) {
		if len(method) == 0 {
			return Unknown, nil
		}
		return Unknown, ErrMore
	}
	if len(method) == 0 || (b[i] != ' ' && b[i] != '\t') {
		return Unknown, nil
	}
	if isStandardMethod(method) {
		return HTTP1, nil
	}
	for i < len(b) && (b[i] == ' ' || b[i] == '\t') {
		i++
	}
	if i == len(b) {
		return Unknown, ErrMore
	}
	switch b[i] {
	case '/', '*':
		return HTTP1, nil
	}
	rest := b[i:]
	for _, scheme := range []string{"http://", "https://"} {
		n := min(len(rest), len(scheme))
		if equalFold(rest[:n], scheme[:n]) {
			if n < len(scheme) {
				return Unknown, ErrMore
			}
			return HTTP1, nil
		}
	}
	return Unknown, nil
}

// standardMethods are matched case-insensitively: "get /" is HTTP to a
// lenient server, and the proxy then refuses it.
var standardMethods = []string{"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"}

func isStandardMethod(m []byte) bool {
	for _, s := range standardMethods {
		if len(m) == len(s) && equalFold(m, s) {
			return true
		}
	}
	return false
}

func isSpace(c byte) bool { return c == ' ' || c == '\t' || c == '\r' || c == '\n' }

// equalFold compares ASCII case-insensitively without allocating.
func equalFold(b []byte, s string) bool {
	if len(b) != len(s) {
		return false
	}
	for i := range b {
		x, y := b[i], s[i]
		if 'a' <= x && x <= 'z' {
			x -= 'a' - 'A'
		}
		if 'a' <= y && y <= 'z' {
			y -= 'a' - 'A'
		}
		if x != y {
			return false
		}
	}
	return true
}
