package normalize

import (
	"bytes"
	"fmt"
	"strings"
)

// Path normalises the path of an HTTP request target: origin-form
// ("/a/b?q"), the path of absolute-form ("http://h/a/b?q"; the authority is
// not part of the result, an empty path is "/"), or "*". It returns the
// normalised path in escaped form, which is what authorization matches, the
// audit log records and the application receives, and the raw query
// (unchanged, without '?'). An error says what was wrong; the proxy answers
// 400 with it. See the package documentation for the rules and examples.
//
// An already normal path is returned as a substring of target, without
// allocating.
func Path(target string, m Mode) (path, query string, err error) {
	if !m.valid() {
		return "", "", fmt.Errorf("normalize: path normalization mode %d is not valid", int(m))
	}
	if target == "*" {
		return "*", "", nil
	}
	// Control characters and spaces are never part of a request target;
	// net/url refuses them too, and an application might not.
	for i := 0; i < len(target); i++ {
		if c := target[i]; class[c]&clsCTL != 0 {
			return "", "", targetError(target, ErrControl, i, fmt.Sprintf("%#02x", c))
		}
	}
	start, err := pathStart(target)
	if err != nil {
		return "", "", err
	}
	rest := target[start:]
	path = rest
	if i := strings.IndexByte(rest, '?'); i >= 0 {
		path, query = rest[:i], rest[i+1:]
	}
	if path == "" {
		path = "/" // absolute-form with an empty path (RFC 9112 3.2.2)
	}
	if m == None {
		return path, query, nil
	}
	// A client never sends a fragment; one in a target is an attempt to
	// have two parsers disagree on where the path ends.
	if i := strings.IndexByte(target, '#'); i >= 0 {
		return "", "", targetError(target, ErrFragment, i, "")
	}
	if normal(path, m) {
		return path, query, nil
	}
	path, err = normalise(target, start, path, m)
	if err != nil {
		return "", "", err
	}
	return path, query, nil
}

// pathStart checks the form of target and returns where its path begins
// (origin-form: 0; absolute-form: after the authority, which may leave an
// empty path or one starting with '?').
func pathStart(target string) (int, error) {
	if target != "" && target[0] == '/' {
		return 0, nil
	}
	var n int
	switch {
	case hasPrefixFold(target, "http://"):
		n = len("http://")
	case hasPrefixFold(target, "https://"):
		n = len("https://")
	default:
		return 0, targetError(target, ErrForm, -1, "")
	}
	end := len(target)
	if i := strings.IndexAny(target[n:], "/?#"); i >= 0 {
		end = n + i
		if target[end] == '#' {
			// Even in mode NONE: parsers disagree on where such a host ends.
			return 0, targetError(target, ErrFragment, end, "in the authority")
		}
	}
	if end == n {
		return 0, targetError(target, ErrForm, -1, "absolute-form without a host")
	}
	return end, nil
}

func hasPrefixFold(s, prefix string) bool {
	return len(s) >= len(prefix) && strings.EqualFold(s[:len(prefix)], prefix)
}

// normal reports whether p, which starts with '/', is already what
// normalise would return for mode m (or would be rejected by it: false
// means "take the slow path", never "invalid").
func normal(p string, m Mode) bool {
	if p == "" || p[0] != '/' {
		return false
	}
	merge := m.merges()
	seg := 1 // start of the current segment
	for i := 1; i <= len(p); i++ {
		if i == len(p) || p[i] == '/' {
			s := p[seg:i]
			if s == "." || s == ".." || (merge && s == "" && i < len(p)) || isDotParam(s) {
				return false
			}
			seg = i + 1
			continue
		}
		c := p[i]
		if c == '%' {
			if i+2 >= len(p) || !isUpperHex(p[i+1]) || !isUpperHex(p[i+2]) {
				return false
			}
			if v := unhex(p[i+1])<<4 | unhex(p[i+2]); v == 0 || v == '/' || v == '\\' || isUnreserved(v) {
				return false
			}
			i += 2
			continue
		}
		if !isPchar(c) {
			return false
		}
	}
	return true
}

// normalise is the slow path: decode into a new buffer, then remove dot
// segments (and merge slashes) in place. off is where p starts in target,
// for error positions.
func normalise(target string, off int, p string, m Mode) (string, error) {
	buf := make([]byte, 0, len(p)+8)
	for i := 0; i < len(p); i++ {
		c := p[i]
		switch {
		case c == '%':
			if i+2 >= len(p) || !isHex(p[i+1]) || !isHex(p[i+2]) {
				return "", targetError(target, ErrEscape, off+i, fmt.Sprintf("%q is not '%%' and two hex digits", p[i:min(i+3, len(p))]))
			}
			v := unhex(p[i+1])<<4 | unhex(p[i+2])
			switch {
			case v == 0:
				return "", targetError(target, ErrNUL, off+i, "%00")
			case v == '/' || v == '\\':
				if m != DecodeAndMergeSlashes {
					return "", targetError(target, ErrEncodedSlash, off+i, fmt.Sprintf("%q is decoded only in mode %s", p[i:i+3], DecodeAndMergeSlashes))
				}
				buf = append(buf, '/')
			case isUnreserved(v):
				buf = append(buf, v)
			default:
				buf = append(buf, '%', upperHex[v>>4], upperHex[v&15])
			}
			i += 2
		case c == '\\':
			// Windows servers and many frameworks treat it as a separator.
			buf = append(buf, '/')
		case c == '/' || isPchar(c):
			buf = append(buf, c)
		default:
			// Not allowed raw in a path ("<>{}|^`[] and non-ASCII bytes):
			// encode, so the raw and the encoded spelling are one path.
			buf = append(buf, '%', upperHex[c>>4], upperHex[c&15])
		}
	}
	out, bad := removeDots(buf, m.merges())
	if bad != nil {
		return "", targetError(target, ErrDotParam, -1, fmt.Sprintf("%q, which servlet containers read as %q", clip(string(bad)), bad[:bytes.IndexByte(bad, ';')]))
	}
	return string(out), nil
}

// isDotParam reports whether segment s is "." or ".." followed by ';'
// parameters. RFC 3986 does not treat it as a dot segment, but Java servlet
// containers strip the parameters first and then go up a level, so
// "/x/..;/admin" would be authorised as itself and served as "/admin".
func isDotParam[S string | []byte](s S) bool {
	return len(s) >= 2 && s[0] == '.' && (s[1] == ';' || len(s) >= 3 && s[1] == '.' && s[2] == ';')
}

// removeDots removes dot segments from b (RFC 3986 5.2.4; ".." at the root
// stays at the root), merging runs of '/' if merge is set. b starts with
// '/'. It works in place: the output never gets ahead of the input. A dot
// segment with parameters stops it and is returned as bad.
func removeDots(b []byte, merge bool) (out, bad []byte) {
	w := 0 // output is b[:w]: "" or "/seg/seg..."
	trailing := false
	for i := 1; i <= len(b); {
		j := i
		for j < len(b) && b[j] != '/' {
			j++
		}
		s := b[i:j]
		last := j == len(b)
		switch {
		case isDotParam(s):
			return nil, s
		case len(s) == 1 && s[0] == '.':
			trailing = last
		case len(s) == 2 && s[0] == '.' && s[1] == '.':
			for w > 0 {
				w--
				if b[w] == '/' {
					break
				}
			}
			trailing = last
		case len(s) == 0:
			if last {
				trailing = true
			} else if !merge {
				b[w] = '/'
				w++
			}
		default:
			b[w] = '/'
			w++
			w += copy(b[w:], s)
			trailing = false
		}
		i = j + 1
	}
	if w == 0 || trailing {
		return append(b[:w], '/'), nil
	}
	return b[:w], nil
}
