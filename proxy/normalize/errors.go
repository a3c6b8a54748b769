package normalize

import (
	"errors"
	"fmt"
)

// Kinds of malformed request target. Every error Path returns for a target
// wraps exactly one of them, so a caller can count refusals by kind (a
// metric label) without reading the text.
var (
	ErrForm         = errors.New("not origin-form (/path), absolute-form (http://host/path) or *")
	ErrControl      = errors.New("control character or space")
	ErrFragment     = errors.New("fragment ('#')")
	ErrEscape       = errors.New("invalid percent-encoding")
	ErrNUL          = errors.New("encoded NUL")
	ErrEncodedSlash = errors.New("encoded '/' or '\\'")
	ErrDotParam     = errors.New("dot segment with parameters")
)

// maxQuoted bounds how much peer input an error quotes: the text goes back
// to the client in a 400, and a 64 KiB echo helps nobody.
const maxQuoted = 96

// targetError says what was wrong with target and where: at is a byte
// offset in target, or -1.
func targetError(target string, kind error, at int, detail string) error {
	var where string
	if at >= 0 {
		where = fmt.Sprintf(" at byte %d", at)
	}
	if detail != "" {
		detail = ": " + detail
	}
	return fmt.Errorf("normalize: request target %q: %w%s%s", clip(target), kind, where, detail)
}

// clip bounds peer input quoted in an error.
func clip(s string) string {
	if len(s) > maxQuoted {
		return s[:maxQuoted] + "..."
	}
	return s
}
