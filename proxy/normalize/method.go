package normalize

import (
	"fmt"
	"strings"

	"golang.org/x/net/http/httpguts"
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
		if !httpguts.IsTokenRune(rune(m[i])) {
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
