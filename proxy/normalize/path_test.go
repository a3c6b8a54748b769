package normalize_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/mesh-dev/mesh/proxy/normalize"
)

// modes in the column order of the tables below.
var modes = [4]normalize.Mode{normalize.None, normalize.Base, normalize.MergeSlashes, normalize.DecodeAndMergeSlashes}

// A result cell is the expected path, or one of these names for an error
// that must wrap the matching sentinel.
var kinds = map[string]error{
	"ErrForm":         normalize.ErrForm,
	"ErrControl":      normalize.ErrControl,
	"ErrFragment":     normalize.ErrFragment,
	"ErrEscape":       normalize.ErrEscape,
	"ErrNUL":          normalize.ErrNUL,
	"ErrEncodedSlash": normalize.ErrEncodedSlash,
	"ErrDotParam":     normalize.ErrDotParam,
}

// row is one request target and the path Path returns in each mode (NONE,
// BASE, MERGE_SLASHES, DECODE_AND_MERGE_SLASHES), with the query every
// successful mode returns.
type row struct {
	target string
	query  string
	want   [4]string
}

// four repeats one cell; norm is "as sent" for NONE and one cell for the
// three normalising modes.
func four(s string) [4]string                 { return [4]string{s, s, s, s} }
func norm(asSent, s string) [4]string         { return [4]string{asSent, s, s, s} }
func slashes(asSent, s, rej string) [4]string { return [4]string{asSent, rej, rej, s} }

// pathRows holds every bypass from issue 9 and the ones an attacker tries
// next.
func pathRows() []row {
	long := "/" + strings.Repeat("abcdefgh/", 7000) + "end"
	deep := strings.Repeat("/x", 5000) + strings.Repeat("/..", 5000) + "/admin"
	above := strings.Repeat("/..", 10000) + "/admin"
	many := strings.Repeat("/", 20000) + "admin"
	encoded := strings.Repeat("/%2e%2e", 5000) + "/%61dmin"
	return []row{
		{target: "/admin", want: four("/admin")},
		{target: "/", want: four("/")},
		{target: "/api/v1/users/42", want: four("/api/v1/users/42")},
		{target: "/admin/", want: four("/admin/")},
		{target: long, want: four(long)},
		// Slashes.
		{target: "//admin", want: [4]string{"//admin", "//admin", "/admin", "/admin"}},
		{target: "///admin//x//", want: [4]string{"///admin//x//", "///admin//x//", "/admin/x/", "/admin/x/"}},
		{target: many, want: [4]string{many, many, "/admin", "/admin"}},
		{target: "/a//../admin", want: [4]string{"/a//../admin", "/a/admin", "/admin", "/admin"}},
		{target: "/a/..//admin", want: [4]string{"/a/..//admin", "//admin", "/admin", "/admin"}},
		// Dot segments, plain and encoded.
		{target: "/./admin", want: norm("/./admin", "/admin")},
		{target: "/x/../admin", want: norm("/x/../admin", "/admin")},
		{target: "/x/%2e%2e/admin", want: norm("/x/%2e%2e/admin", "/admin")},
		{target: "/x/%2E%2E/admin", want: norm("/x/%2E%2E/admin", "/admin")},
		{target: "/x/.%2e/admin", want: norm("/x/.%2e/admin", "/admin")},
		{target: "/%2e%2e/admin", want: norm("/%2e%2e/admin", "/admin")},
		{target: "/%2e/admin", want: norm("/%2e/admin", "/admin")},
		{target: "/../../admin", want: norm("/../../admin", "/admin")},
		{target: "/..", want: norm("/..", "/")},
		{target: "/.", want: norm("/.", "/")},
		{target: "/admin/.", want: norm("/admin/.", "/admin/")},
		{target: "/admin/..", want: norm("/admin/..", "/")},
		{target: "/admin/%2e", want: norm("/admin/%2e", "/admin/")},
		{target: "/a/b/../c/./d/..", want: norm("/a/b/../c/./d/..", "/a/c/")},
		{target: "/.../admin", want: four("/.../admin")},
		{target: "/..a/admin", want: four("/..a/admin")},
		{target: "/admin..", want: four("/admin..")},
		{target: deep, want: norm(deep, "/admin")},
		{target: above, want: norm(above, "/admin")},
		{target: encoded, want: norm(encoded, "/admin")},
		// Encoded separators.
		{target: "/a/..%2Fadmin", want: slashes("/a/..%2Fadmin", "/admin", "ErrEncodedSlash")},
		{target: "/a/..%2fadmin", want: slashes("/a/..%2fadmin", "/admin", "ErrEncodedSlash")},
		{target: "/admin%2F", want: slashes("/admin%2F", "/admin/", "ErrEncodedSlash")},
		{target: "/admin%5cx", want: slashes("/admin%5cx", "/admin/x", "ErrEncodedSlash")},
		{target: "/a%5C..%5Cadmin", want: slashes("/a%5C..%5Cadmin", "/admin", "ErrEncodedSlash")},
		{target: "/%2F%2Fadmin", want: slashes("/%2F%2Fadmin", "/admin", "ErrEncodedSlash")},
		{target: "/api/%2e%2e%2fadmin", want: slashes("/api/%2e%2e%2fadmin", "/admin", "ErrEncodedSlash")},
		// Backslashes.
		{target: "/x/..\\admin", want: norm("/x/..\\admin", "/admin")},
		{target: "/\\admin", want: [4]string{"/\\admin", "//admin", "/admin", "/admin"}},
		{target: "\\admin", want: four("ErrForm")},
		// Unreserved characters decoded, other encodings kept with upper-case hex.
		{target: "/%61dmin", want: norm("/%61dmin", "/admin")},
		{target: "/%41%44%4d%49%4e", want: norm("/%41%44%4d%49%4e", "/ADMIN")},
		{target: "/a%2Djs%5F%7E%2e", want: norm("/a%2Djs%5F%7E%2e", "/a-js_~.")},
		{target: "/app%2ejs", want: norm("/app%2ejs", "/app.js")},
		{target: "/a%3ab", want: norm("/a%3ab", "/a%3Ab")},
		{target: "/a%3Ab", want: four("/a%3Ab")},
		{target: "/a%20b", want: four("/a%20b")},
		{target: "/%2561dmin", want: four("/%2561dmin")},
		{target: "/%252e%252e/admin", want: four("/%252e%252e/admin")},
		// Overlong UTF-8 and fullwidth dots are not "..": kept encoded
		// (raw and encoded spellings alike), never a dot segment.
		{target: "/x/%c0%ae%c0%ae/admin", want: norm("/x/%c0%ae%c0%ae/admin", "/x/%C0%AE%C0%AE/admin")},
		{target: "/x/\xc0\xae\xc0\xae/admin", want: norm("/x/\xc0\xae\xc0\xae/admin", "/x/%C0%AE%C0%AE/admin")},
		{target: "/x/%ef%bc%8e%ef%bc%8e/admin", want: norm("/x/%ef%bc%8e%ef%bc%8e/admin", "/x/%EF%BC%8E%EF%BC%8E/admin")},
		{target: "/a%0d%0ab", want: norm("/a%0d%0ab", "/a%0D%0Ab")},
		// Bytes not allowed raw in a path are encoded.
		{target: "/a{b}", want: norm("/a{b}", "/a%7Bb%7D")},
		{target: "/a|b^c`d\"e<f>g[h]", want: norm("/a|b^c`d\"e<f>g[h]", "/a%7Cb%5Ec%60d%22e%3Cf%3Eg%5Bh%5D")},
		{target: "/caf\xc3\xa9", want: norm("/caf\xc3\xa9", "/caf%C3%A9")},
		{target: "/\xff", want: norm("/\xff", "/%FF")},
		// Sub-delims, ':' and '@' stay as they are.
		{target: "/a:b@c!$&'()*+,;=", want: four("/a:b@c!$&'()*+,;=")},
		// Path parameters.
		{target: "/admin;x", want: four("/admin;x")},
		{target: "/x/..;/admin", want: norm("/x/..;/admin", "ErrDotParam")},
		{target: "/x/.;/admin", want: norm("/x/.;/admin", "ErrDotParam")},
		{target: "/x/%2e%2e;a=b/admin", want: norm("/x/%2e%2e;a=b/admin", "ErrDotParam")},
		{target: "/x/..%3b/admin", want: norm("/x/..%3b/admin", "/x/..%3B/admin")},
		// Invalid encodings and NUL.
		{target: "/admin%zz", want: norm("/admin%zz", "ErrEscape")},
		{target: "/admin%2", want: norm("/admin%2", "ErrEscape")},
		{target: "/admin%", want: norm("/admin%", "ErrEscape")},
		{target: "/admin%%32%65", want: norm("/admin%%32%65", "ErrEscape")},
		{target: "/admin%u002e", want: norm("/admin%u002e", "ErrEscape")},
		{target: "/admin%00", want: norm("/admin%00", "ErrNUL")},
		// Fragments, control characters, spaces.
		{target: "/admin#x", want: norm("/admin#x", "ErrFragment")},
		{target: "/public?#/admin", query: "#/admin", want: norm("/public", "ErrFragment")},
		{target: "/admin x", want: four("ErrControl")},
		{target: "/admin\x00", want: four("ErrControl")},
		{target: "/admin\tx", want: four("ErrControl")},
		{target: "/admin\r\nX-Mesh-Peer-Identity: x", want: four("ErrControl")},
		{target: "/admin\x7f", want: four("ErrControl")},
		{target: "/admin?a=\n", want: four("ErrControl")},
		// The query is split off and never touched.
		{target: "/admin?x=/../y", query: "x=/../y", want: four("/admin")},
		{target: "/x/../admin?%2F%zz", query: "%2F%zz", want: norm("/x/../admin", "/admin")},
		{target: "/admin?", want: four("/admin")},
		{target: "/admin??a", query: "?a", want: four("/admin")},
		// Case is preserved.
		{target: "/ADMIN", want: four("/ADMIN")},
		{target: "/Admin/%2E%2E/ADMIN", want: norm("/Admin/%2E%2E/ADMIN", "/ADMIN")},
		// Absolute-form: the path only.
		{target: "http://h//admin", want: [4]string{"//admin", "//admin", "/admin", "/admin"}},
		{target: "http://h/x/../admin?q", query: "q", want: norm("/x/../admin", "/admin")},
		{target: "HTTPS://h:8443/%61dmin", want: norm("/%61dmin", "/admin")},
		{target: "http://h", want: four("/")},
		{target: "http://h?x=1", query: "x=1", want: four("/")},
		{target: "http://user@h/admin", want: four("/admin")},
		{target: "http://h#/admin", want: four("ErrFragment")},
		{target: "http:///admin", want: four("ErrForm")},
		{target: "http://", want: four("ErrForm")},
		{target: "http:/admin", want: four("ErrForm")},
		{target: "ftp://h/admin", want: four("ErrForm")},
		{target: "h/admin", want: four("ErrForm")},
		// Not a request target at all.
		{target: "admin", want: four("ErrForm")},
		{target: "../x", want: four("ErrForm")},
		{target: "./admin", want: four("ErrForm")},
		{target: "", want: four("ErrForm")},
		{target: "?a", want: four("ErrForm")},
		{target: "h:443", want: four("ErrForm")},
		{target: "**", want: four("ErrForm")},
		{target: "*", want: four("*")},
	}
}

func TestPath(t *testing.T) {
	for _, r := range pathRows() {
		for i, m := range modes {
			name := clipName(r.target) + "/" + m.String()
			t.Run(name, func(t *testing.T) {
				path, query, err := normalize.Path(r.target, m)
				want := r.want[i]
				if kind, isErr := kinds[want]; isErr {
					if !errors.Is(err, kind) {
						t.Fatalf("Path(%q, %s) = %q, %q, %v; want an error wrapping %q", r.target, m, path, query, err, kind)
					}
					if !strings.HasPrefix(err.Error(), "normalize: ") || len(err.Error()) > 400 {
						t.Errorf("error %q: want a \"normalize: \" prefix and a bounded length", err)
					}
					if path != "" || query != "" {
						t.Errorf("Path(%q, %s) returned %q, %q with its error", r.target, m, path, query)
					}
					return
				}
				if err != nil {
					t.Fatalf("Path(%q, %s): %v; want %q", r.target, m, err, want)
				}
				if path != want || query != r.query {
					t.Errorf("Path(%q, %s) = %q, %q; want %q, %q", r.target, m, path, query, want, r.query)
				}
			})
		}
	}
}

func clipName(s string) string {
	if len(s) > 40 {
		return s[:40]
	}
	return s
}

// TestPathErrors pins the text of each kind of error: it is the body of the
// proxy's 400, so it must say what was wrong and where, and quote a bounded
// amount of the client's input.
func TestPathErrors(t *testing.T) {
	long := "/" + strings.Repeat("a", 200) + "%zz"
	tests := []struct {
		target string
		mode   normalize.Mode
		want   string
	}{
		{"/a%zz", normalize.Base, `normalize: request target "/a%zz": invalid percent-encoding at byte 2: "%zz" is not '%' and two hex digits`},
		{"/a%2", normalize.MergeSlashes, `normalize: request target "/a%2": invalid percent-encoding at byte 2: "%2" is not '%' and two hex digits`},
		{"/a%00", normalize.MergeSlashes, `normalize: request target "/a%00": encoded NUL at byte 2: %00`},
		{"/a/..%2Fadmin", normalize.MergeSlashes, `normalize: request target "/a/..%2Fadmin": encoded '/' or '\' at byte 5: "%2F" is decoded only in mode DECODE_AND_MERGE_SLASHES`},
		{"http://h/a%5c", normalize.Base, `normalize: request target "http://h/a%5c": encoded '/' or '\' at byte 10: "%5c" is decoded only in mode DECODE_AND_MERGE_SLASHES`},
		{"/a#b", normalize.MergeSlashes, `normalize: request target "/a#b": fragment ('#') at byte 2`},
		{"/a b", normalize.None, `normalize: request target "/a b": control character or space at byte 2: 0x20`},
		{"/x/..;/admin", normalize.MergeSlashes, `normalize: request target "/x/..;/admin": dot segment with parameters: "..;", which servlet containers read as ".."`},
		{"admin", normalize.MergeSlashes, `normalize: request target "admin": not origin-form (/path), absolute-form (http://host/path) or *`},
		{"http:///admin", normalize.MergeSlashes, `normalize: request target "http:///admin": not origin-form (/path), absolute-form (http://host/path) or *: absolute-form without a host`},
		{long, normalize.MergeSlashes, `normalize: request target "` + long[:96] + `...": invalid percent-encoding at byte 201: "%zz" is not '%' and two hex digits`},
		{"/admin", 0, `normalize: path normalization mode 0 is not valid`},
		{"/admin", normalize.DecodeAndMergeSlashes + 1, `normalize: path normalization mode 5 is not valid`},
	}
	for _, tt := range tests {
		t.Run(clipName(tt.target), func(t *testing.T) {
			_, _, err := normalize.Path(tt.target, tt.mode)
			if err == nil || err.Error() != tt.want {
				t.Errorf("Path(%q, %s) error = %v;\nwant %s", tt.target, tt.mode, err, tt.want)
			}
		})
	}
}

// TestPathNoAlloc pins the fast path: a request whose path is already
// normal costs no allocation, in any mode.
func TestPathNoAlloc(t *testing.T) {
	targets := []string{
		"/",
		"/api/v1/users/42",
		"/api/v1/users/42?expand=true&x=%2F",
		"/static/app.min.js",
		"/a%3Ab/c%20d;e=f/",
		"http://h/api/v1?x",
		"*",
	}
	for _, target := range targets {
		for _, m := range modes {
			var err error
			allocs := testing.AllocsPerRun(100, func() { _, _, err = normalize.Path(target, m) })
			if err != nil {
				t.Fatalf("Path(%q, %s): %v", target, m, err)
			}
			if allocs != 0 {
				t.Errorf("Path(%q, %s) allocates %.0f times; want 0", target, m, allocs)
			}
		}
	}
}

func BenchmarkPath(b *testing.B) {
	for _, bb := range []struct{ name, target string }{
		{"normal", "/api/v1/namespaces/default/pods/web-7d4b9c?watch=true"},
		{"abnormal", "//api/v1/./namespaces/%64efault/x/../pods/web-7d4b9c?watch=true"},
	} {
		b.Run(bb.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, _, err := normalize.Path(bb.target, normalize.DefaultMode); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
