package normalize

import "strings"

// Byte-level rules of RFC 3986 that Path applies.

const upperHex = "0123456789ABCDEF"

func unhex(c byte) byte {
	switch {
	case c <= '9':
		return c - '0'
	case c >= 'a':
		return c - 'a' + 10
	default:
		return c - 'A' + 10
	}
}

// Character classes, one table lookup per byte on the hot path.
const (
	clsCTL        = 1 << iota // never in a request target: CTLs, space, DEL
	clsUnreserved             // ALPHA DIGIT - . _ ~ (RFC 3986 2.3)
	clsPchar                  // allowed raw in a segment: unreserved, sub-delims, ':', '@' (3.3)
	clsHex
	clsUpperHex
)

var class = func() (t [256]uint8) {
	for c := 0; c < 256; c++ {
		switch {
		case c <= ' ' || c == 0x7f:
			t[c] |= clsCTL
		case 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || strings.IndexByte("-._~", byte(c)) >= 0:
			t[c] |= clsUnreserved | clsPchar
		case strings.IndexByte("!$&'()*+,;=:@", byte(c)) >= 0:
			t[c] |= clsPchar
		}
		if '0' <= c && c <= '9' || 'A' <= c && c <= 'F' {
			t[c] |= clsHex | clsUpperHex
		}
		if 'a' <= c && c <= 'f' {
			t[c] |= clsHex
		}
	}
	return t
}()

func isHex(c byte) bool        { return class[c]&clsHex != 0 }
func isUpperHex(c byte) bool   { return class[c]&clsUpperHex != 0 }
func isUnreserved(c byte) bool { return class[c]&clsUnreserved != 0 }

// isPchar: what a path segment may hold raw besides percent-encodings. The
// encoded and plain spellings of an unreserved character are equivalent
// (RFC 3986 6.2.2.2); those of the other pchars are not, so only unreserved
// ones are decoded.
func isPchar(c byte) bool { return class[c]&clsPchar != 0 }
