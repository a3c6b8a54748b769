package proxy

import (
	"strings"
	"sync"
)

// Routes label the HTTP metrics: a request's path turned into a template
// whose segments that look like identifiers (numbers, UUIDs, hashes, long
// tokens) read {id}, cut after routeSegments segments, with no query.
// gRPC's /package.Service/Method paths are kept as they are. Each proxy
// keeps at most MaxRoutes templates per direction; past that, requests
// are labelled "other", so that no client can grow the metrics without
// bound by inventing paths.
const (
	// DefaultMaxRoutes is Config.MaxRoutes's default.
	DefaultMaxRoutes = 100
	routeSegments    = 4
	routeOther       = "other"
	routeInvalid     = "invalid"
)

// routeTemplate is path's template. path is the normalised, escaped path.
func routeTemplate(path string) string {
	if i := strings.IndexAny(path, "?#"); i >= 0 {
		path = path[:i]
	}
	if path == "" || path == "/" {
		return "/"
	}
	if path[0] != '/' {
		// An absolute-form or asterisk-form target never gets here
		// normalised; keep the label bounded all the same.
		return routeInvalid
	}
	var b strings.Builder
	b.Grow(len(path))
	rest := path[1:]
	for n := 0; ; n++ {
		if n == routeSegments {
			b.WriteString("/{rest}")
			break
		}
		seg, tail, more := strings.Cut(rest, "/")
		b.WriteByte('/')
		if looksLikeID(seg) {
			b.WriteString("{id}")
		} else {
			b.WriteString(seg)
		}
		if !more {
			break
		}
		rest = tail
	}
	return b.String()
}

// looksLikeID reports whether a path segment is most likely a value
// rather than part of the route: all digits, a UUID, a hexadecimal string
// of 8 or more with a digit, a token of 16 or more a quarter of which is
// digits, or anything longer than 40 bytes.
func looksLikeID(s string) bool {
	if s == "" {
		return false
	}
	if len(s) > 40 {
		return true
	}
	digits, hex := 0, 0
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= '0' && c <= '9':
			digits++
			hex++
		case c >= 'a' && c <= 'f', c >= 'A' && c <= 'F':
			hex++
		case c == '-' && len(s) == 36 && (i == 8 || i == 13 || i == 18 || i == 23):
			hex++ // UUID dashes
		}
	}
	switch {
	case digits == len(s):
		return true
	case hex == len(s) && digits > 0 && len(s) >= 8:
		return true
	case len(s) >= 16 && 4*digits >= len(s):
		// A long token, a quarter of it digits (gRPC's
		// "grpc.health.v1.Health" is a name).
		return true
	}
	return false
}

// routes bounds the route labels one direction uses.
type routes struct {
	max  int
	mu   sync.RWMutex
	seen map[string]struct{}
}

func newRoutes(max int) *routes { return &routes{max: max, seen: map[string]struct{}{}} }

// label is path's route label: its template while fewer than max
// templates were seen, or one of them; "other" past the cap.
func (r *routes) label(path string) string {
	t := routeTemplate(path)
	r.mu.RLock()
	_, ok := r.seen[t]
	r.mu.RUnlock()
	if ok || t == routeInvalid {
		return t
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, ok := r.seen[t]; ok {
		return t
	}
	if len(r.seen) >= r.max {
		return routeOther
	}
	r.seen[t] = struct{}{}
	return t
}

// known is path's label for a request that was refused: its template if
// already seen, else "other", so refused requests cannot fill the cap.
func (r *routes) known(path string) string {
	t := routeTemplate(path)
	r.mu.RLock()
	_, ok := r.seen[t]
	r.mu.RUnlock()
	if ok || t == routeInvalid {
		return t
	}
	return routeOther
}
