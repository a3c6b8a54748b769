package proxy

import (
	"fmt"
	"strings"
	"testing"
	"unicode/utf8"
)

func TestRouteTemplate(t *testing.T) {
	for _, tc := range []struct{ path, want string }{
		{"", "/"},
		{"/", "/"},
		{"/api/users", "/api/users"},
		{"/api/users/42", "/api/users/{id}"},
		{"/api/users/42/orders/7", "/api/users/{id}/orders/{rest}"},
		{"/a/b/c/d", "/a/b/c/d"},
		{"/a/b/c/d/e", "/a/b/c/d/{rest}"},
		{"/items/3fa85f64-5717-4562-b3fc-2c963f66afa6", "/items/{id}"},
		{"/blobs/deadbeef01", "/blobs/{id}"},
		{"/blobs/deadbeef", "/blobs/deadbeef"}, // no digit: a word
		{"/tokens/abcDEF123456ghiJKL", "/tokens/{id}"},
		{"/v1/health", "/v1/health"},
		{"/grpc.health.v1.Health/Check", "/grpc.health.v1.Health/Check"},
		{"/search?q=1&page=2", "/search"},
		{"/a#frag", "/a"},
		{"/" + strings.Repeat("x", 41), "/{id}"},
		{"//", "//"},
		{"*", routeInvalid},
		{"http://host/x", routeInvalid},
	} {
		if got := routeTemplate(tc.path); got != tc.want {
			t.Errorf("routeTemplate(%q) = %q, want %q", tc.path, got, tc.want)
		}
	}
}

// The labels a client can create are bounded: past MaxRoutes templates,
// "other".
func TestRoutesCapped(t *testing.T) {
	r := newRoutes(3)
	for i, p := range []string{"/a", "/b", "/a", "/c"} {
		if got := r.label(p); got != p {
			t.Fatalf("label %d %q = %q", i, p, got)
		}
	}
	for i := range 1000 {
		if got := r.label(fmt.Sprintf("/new%c", 'd'+i%20)); got != routeOther {
			t.Fatalf("a fourth template got its own label %q", got)
		}
	}
	if got := r.label("/b"); got != "/b" {
		t.Fatalf("a known template after the cap: %q", got)
	}
	if len(r.seen) != 3 {
		t.Fatalf("%d templates kept", len(r.seen))
	}
}

// FuzzRouteTemplate: any path gives a label no longer than the path plus
// the placeholders, made of the path's own bytes and the placeholders,
// with at most routeSegments segments and no query.
func FuzzRouteTemplate(f *testing.F) {
	for _, s := range []string{"/", "/a/1/b/2/c/3", "/x?y=/z", "", "*", "/%2F/..", "/" + strings.Repeat("1/", 100)} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, path string) {
		got := routeTemplate(path)
		if got == routeInvalid {
			return
		}
		if !strings.HasPrefix(got, "/") || strings.ContainsAny(got, "?#") {
			t.Fatalf("routeTemplate(%q) = %q", path, got)
		}
		if n := strings.Count(got, "/"); n > routeSegments+1 {
			t.Fatalf("routeTemplate(%q) = %q: %d segments", path, got, n)
		}
		if len(got) > len(path)+len("/{rest}")+4*len("{id}") && len(got) > 8 {
			t.Fatalf("routeTemplate(%q) = %q: longer than its path", path, got)
		}
		if utf8.ValidString(path) && !utf8.ValidString(got) {
			t.Fatalf("routeTemplate(%q) = %q: invalid UTF-8 from valid", path, got)
		}
	})
}
