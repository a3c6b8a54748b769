package h1

import (
	"bytes"
	"iter"
)

// Fields yields the header fields of h in order, names as sent and values
// without the surrounding whitespace. The gate needs only the framing
// fields Parse records; the tests read every field to check the parser
// splits them as net/http does.
func (h *Head) Fields() iter.Seq2[[]byte, []byte] {
	return func(yield func([]byte, []byte) bool) {
		rest := h.raw
		if i := bytes.IndexByte(rest, '\n'); i >= 0 {
			rest = rest[i+1:] // the request line
		}
		for len(rest) > 2 {
			i := bytes.IndexByte(rest, '\n')
			name, value, _ := splitField(rest[:i-1])
			if !yield(name, value) {
				return
			}
			rest = rest[i+1:]
		}
	}
}
