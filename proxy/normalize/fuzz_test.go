package normalize_test

import (
	"errors"
	"net/http"
	"net/url"
	"path"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/mesh-dev/mesh/proxy/normalize"
)

// FuzzPath checks, for any target and mode, that Path does not panic and
// that what it returns is a fixed point with the properties authorization
// relies on, and agrees with two independent oracles: the text of RFC 3986
// 5.2.4, and path.Clean over the fully decoded path.
func FuzzPath(f *testing.F) {
	for _, r := range pathRows() {
		if len(r.target) < 1000 {
			f.Add(r.target, uint8(0))
		}
	}
	f.Add("/a/%2e%2E/%2F..%5c/b", uint8(3))
	f.Add("/..;/.;/", uint8(2))
	f.Fuzz(func(t *testing.T, target string, mb uint8) {
		m := modes[int(mb)%len(modes)]
		p, q, err := normalize.Path(target, m)
		if err != nil {
			if !strings.HasPrefix(err.Error(), "normalize: ") {
				t.Fatalf("error without the package prefix: %v", err)
			}
			if m != normalize.None && !slices.ContainsFunc(sentinels, func(k error) bool { return errors.Is(err, k) }) {
				t.Fatalf("error wraps none of the kinds: %v", err)
			}
			return
		}
		if target == "*" {
			if p != "*" || q != "" {
				t.Fatalf("Path(*) = %q, %q", p, q)
			}
			return
		}
		if !strings.HasPrefix(p, "/") {
			t.Fatalf("Path(%q, %s) = %q: does not start with '/'", target, m, p)
		}
		if !strings.HasSuffix(target, "?"+q) && q != "" {
			t.Fatalf("Path(%q, %s): query %q is not the target's", target, m, q)
		}
		if m == normalize.None {
			if !strings.Contains(target, p) && p != "/" {
				t.Fatalf("NONE changed the path: %q -> %q", target, p)
			}
			return
		}
		// A fixed point: the application, the audit log and authorization
		// may normalise again and must get the same path.
		p2, q2, err := normalize.Path(p, m)
		if err != nil || p2 != p || q2 != "" {
			t.Fatalf("not idempotent in %s: %q -> %q -> %q, %q, %v", m, target, p, p2, q2, err)
		}
		// Whatever net/url does with it, it must read it as this path.
		dec, err := url.PathUnescape(p)
		if err != nil {
			t.Fatalf("Path(%q, %s) = %q, which net/url cannot unescape: %v", target, m, p, err)
		}
		u, err := url.ParseRequestURI(p)
		if err != nil || u.EscapedPath() != p || u.Path != dec {
			t.Fatalf("net/url reads %q as %+v, %v", p, u, err)
		}
		checkCanonical(t, target, p, m)
		raw := rawPath(target)
		canon := refCanon(raw, m == normalize.DecodeAndMergeSlashes)
		switch m {
		case normalize.Base:
			if want := rfcRemoveDotSegments(canon); p != want {
				t.Fatalf("BASE: Path(%q) = %q; RFC 3986 5.2.4 gives %q", target, p, want)
			}
		default:
			if want := rfcRemoveDotSegments(slashRun.ReplaceAllString(canon, "/")); p != want {
				t.Fatalf("%s: Path(%q) = %q; merging and RFC 3986 5.2.4 give %q", m, target, p, want)
			}
			// Independent of how escapes are handled: the fully decoded
			// input and output name the same file.
			in, err := url.PathUnescape(raw)
			if err != nil {
				t.Fatalf("accepted %q, which net/url cannot unescape: %v", target, err)
			}
			in = strings.ReplaceAll(in, `\`, "/")
			if path.Clean(in) != path.Clean(dec) {
				t.Fatalf("%s: %q decodes to %q, but the output %q decodes to %q", m, target, path.Clean(in), p, path.Clean(dec))
			}
		}
	})
}

var sentinels = []error{normalize.ErrForm, normalize.ErrControl, normalize.ErrFragment, normalize.ErrEscape, normalize.ErrNUL, normalize.ErrEncodedSlash, normalize.ErrDotParam}

var (
	slashRun       = regexp.MustCompile(`/{2,}`)
	lowerHex       = regexp.MustCompile(`%[0-9A-Fa-f]?[a-f]|%[a-f][0-9A-Fa-f]`)
	unreservedEnc  = regexp.MustCompile(`(?i)%(2D|2E|5F|7E|3[0-9]|[46][1-9A-F]|[57][0-9A])`)
	separatorEnc   = regexp.MustCompile(`(?i)%(2F|5C|00)`)
	notPathChar    = regexp.MustCompile(`[^A-Za-z0-9\-._~!$&'()*+,;=:@/%]`)
	dotSegment     = regexp.MustCompile(`(^|/)\.\.?(/|;|$)`)
	emptyMidSegmnt = regexp.MustCompile(`//`)
)

// checkCanonical asserts what every normalising mode guarantees of its
// output.
func checkCanonical(t *testing.T, target, p string, m normalize.Mode) {
	t.Helper()
	for _, c := range []struct {
		re   *regexp.Regexp
		what string
	}{
		{dotSegment, "a dot segment"},
		{separatorEnc, "an encoded separator or NUL"},
		{unreservedEnc, "an encoded unreserved character"},
		{lowerHex, "lower-case hex"},
		{notPathChar, "a byte not allowed in a path"},
	} {
		if loc := c.re.FindStringIndex(p); loc != nil {
			t.Fatalf("Path(%q, %s) = %q: %s at %d", target, m, p, c.what, loc[0])
		}
	}
	if m != normalize.Base && emptyMidSegmnt.MatchString(p) {
		t.Fatalf("Path(%q, %s) = %q: '//' survived merging", target, m, p)
	}
}

// rawPath is the path part of an accepted origin-form or absolute-form
// target.
func rawPath(target string) string {
	if !strings.HasPrefix(target, "/") {
		i := strings.Index(target, "://") + 3
		j := strings.IndexAny(target[i:], "/?")
		if j < 0 {
			return "/"
		}
		target = target[i+j:]
	}
	p, _, _ := strings.Cut(target, "?")
	if p == "" {
		return "/"
	}
	return p
}

// refCanon is a deliberately plain oracle for the per-byte rules: decode
// unreserved characters, upper-case the hex of other encodings, encode what
// may not appear raw, '\' to '/', and %2F/%5C to '/' when decode is set.
func refCanon(p string, decode bool) string {
	var b strings.Builder
	for i := 0; i < len(p); i++ {
		switch c := p[i]; {
		case c == '%':
			s, _ := url.PathUnescape(p[i : i+3])
			switch {
			case decode && (s == "/" || s == `\`):
				b.WriteByte('/')
			case strings.ContainsAny(s, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~"):
				b.WriteString(s)
			default:
				b.WriteString(strings.ToUpper(p[i : i+3]))
			}
			i += 2
		case c == '\\':
			b.WriteByte('/')
		case strings.IndexByte("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~!$&'()*+,;=:@/", c) >= 0:
			b.WriteByte(c)
		default:
			b.WriteString("%" + strings.ToUpper(string("0123456789abcdef"[c>>4])+string("0123456789abcdef"[c&15])))
		}
	}
	return b.String()
}

// rfcRemoveDotSegments is RFC 3986 5.2.4 transcribed step by step.
func rfcRemoveDotSegments(in string) string {
	out := ""
	removeLast := func() {
		out = out[:max(strings.LastIndexByte(out, '/'), 0)]
	}
	for in != "" {
		switch {
		case strings.HasPrefix(in, "../"): // A
			in = in[3:]
		case strings.HasPrefix(in, "./"):
			in = in[2:]
		case strings.HasPrefix(in, "/./"): // B
			in = in[2:]
		case in == "/.":
			in = "/"
		case strings.HasPrefix(in, "/../"): // C
			in = in[3:]
			removeLast()
		case in == "/..":
			in = "/"
			removeLast()
		case in == "." || in == "..": // D
			in = ""
		default: // E
			j := strings.IndexByte(in[1:], '/')
			if j < 0 {
				out, in = out+in, ""
			} else {
				out, in = out+in[:j+1], in[j+1:]
			}
		}
	}
	return out
}

// FuzzHeaders checks that after Headers no variant of a mesh header is
// left, underscore names are handled as the action says, and every other
// header is untouched.
func FuzzHeaders(f *testing.F) {
	f.Add("X-Mesh-Peer-Identity\nx_mesh_peer_identity\nX_Mesh-Peer_identity\nAccept", uint8(0))
	f.Add("X_User\nX-User\nContent-Type", uint8(1))
	f.Add("x-mesh-\nX-Meshy\nX_MESH_\n_", uint8(2))
	f.Add("", uint8(0))
	f.Fuzz(func(t *testing.T, names string, ab uint8) {
		a := []normalize.UnderscoreAction{normalize.Reject, normalize.Drop, normalize.Allow}[int(ab)%3]
		h := http.Header{}
		for i, n := range strings.Split(names, "\n") {
			h[n] = append(h[n], "v"+string(rune('a'+i%26)))
		}
		before := h.Clone()
		removed, err := normalize.Headers(h, a)
		if !slices.IsSorted(removed) {
			t.Fatalf("removed %q is not sorted", removed)
		}
		for n := range h {
			if normalize.IsMeshHeader(n) {
				t.Fatalf("mesh header %q survived", n)
			}
			if !slices.Equal(h[n], before[n]) {
				t.Fatalf("header %q changed: %q -> %q", n, before[n], h[n])
			}
		}
		var wantRemoved []string
		underscore := false
		for n := range before {
			_, kept := h[n]
			isMesh := normalize.IsMeshHeader(n)
			hasUnderscore := strings.Contains(n, "_")
			underscore = underscore || (hasUnderscore && !isMesh)
			shouldGo := isMesh || (hasUnderscore && a == normalize.Drop)
			if kept == shouldGo {
				t.Fatalf("header %q (action %s): kept=%v", n, a, kept)
			}
			if shouldGo {
				wantRemoved = append(wantRemoved, n)
			}
			// Mesh's names lower-cased with '-': a second, independent
			// reading of IsMeshHeader.
			if want := strings.HasPrefix(strings.ReplaceAll(strings.ToLower(n), "_", "-"), "x-mesh-"); isMesh != want {
				t.Fatalf("IsMeshHeader(%q) = %v", n, isMesh)
			}
		}
		slices.Sort(wantRemoved)
		if !slices.Equal(removed, wantRemoved) {
			t.Fatalf("removed %q; want %q", removed, wantRemoved)
		}
		if wantErr := a == normalize.Reject && underscore; (err != nil) != wantErr {
			t.Fatalf("action %s, underscore header present %v: err %v", a, underscore, err)
		}
	})
}

// FuzzMethod: Method never panics, accepts exactly the tokens that are not
// a standard method in the wrong case.
func FuzzMethod(f *testing.F) {
	for _, s := range []string{"GET", "get", "Delete", "PURGE", "", "G T", "ＧＥＴ", "GET\x00"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, m string) {
		err := normalize.Method(m)
		token := m != "" && !strings.ContainsFunc(m, func(r rune) bool {
			return r > 0x7e || !strings.ContainsRune("!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz", r)
		})
		miscased := slices.ContainsFunc([]string{"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"}, func(s string) bool {
			return strings.ToUpper(m) == s && m != s
		})
		if want := token && !miscased; (err == nil) != want {
			t.Fatalf("Method(%q) = %v; want accepted=%v", m, err, want)
		}
	})
}
