package proxy

import (
	"net/http"
	"testing"
)

// BenchmarkSimple is the direct path's per-request check of what a
// request needs (direct.go), on what the inbound ReverseProxy hands over
// for a browser-like GET: a handful of headers and the peer's identity.
func BenchmarkSimple(b *testing.B) {
	r, err := http.NewRequest(http.MethodGet, "http://10.0.0.7:8080/api/v1/items?page=2", nil)
	if err != nil {
		b.Fatal(err)
	}
	r.Header = http.Header{
		"User-Agent":           {"Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"},
		"Accept":               {"text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"},
		"Accept-Language":      {"en-GB,en;q=0.5"},
		"Traceparent":          {"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"},
		"Cookie":               {"session=0123456789abcdef0123456789abcdef; theme=dark"},
		"X-Mesh-Peer-Identity": {"spiffe://cluster.local/ns/shop/sa/frontend"},
	}
	b.ReportAllocs()
	for b.Loop() {
		if !simple(r) {
			b.Fatal("not simple")
		}
	}
}
