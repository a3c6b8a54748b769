package normalize

import (
	"fmt"
	"strings"
)

// standardMethods are the methods of RFC 9110 and PATCH (RFC 5789). Policies
// name them in upper case and match them exactly.
var standardMethods = [...]string{"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"}

// Method checks a request method. Methods are case-sensitive (RFC 9110
// 9.1), but many applications compare them case-insensitively, so "delete"
// would slip past a DENY on DELETE and be served as one: a method that
// equals a standard one case-insensitively but not exactly is an error.
// Any other token (PURGE, a custom method) is fine; an empty method or one
// that is not a token is an error.
func Method(m string) error {
	if m == "" {
		return fmt.Errorf("normalize: empty method")
	}
	for i := 0; i < len(m); i++ {
		if !isTchar(m[i]) {
			return fmt.Errorf("normalize: method %q is not a token: byte %#02x at %d", clip(m), m[i], i)
		}
	}
	for _, s := range standardMethods {
		if len(m) != len(s) {
			continue
		}
		if m == s {
			return nil
		}
		if strings.EqualFold(m, s) {
			return fmt.Errorf("normalize: method %q is not upper-case %s", m, s)
		}
	}
	return nil
}

// isTchar: the characters of an HTTP token (RFC 9110 5.6.2).
func isTchar(c byte) bool {
	if 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' {
		return true
	}
	switch c {
	case '!', '#', '$', '%', '&', '\'', '*', '+', '-', '.', '^', '_', '`', '|', '~':
		return true
	}
	return false
}
