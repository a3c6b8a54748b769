package sniff_test

import (
	"bufio"
	"bytes"
	"errors"
	"net/http"
	"strings"
	"testing"

	"github.com/mesh-dev/mesh/proxy/sniff"
)

func TestApp(t *testing.T) {
	tests := []struct {
		in      string
		want    sniff.Protocol
		wantErr error
	}{
		{"", sniff.Unknown, sniff.ErrMore},
		{"GET / HTTP/1.1\r\n", sniff.HTTP1, nil},
		{"GE", sniff.Unknown, sniff.ErrMore},
		// Methods the old sniffer did not know: still HTTP, so every
		// request on the connection is decided.
		{"PURGE /admin HTTP/1.1\r\n", sniff.HTTP1, nil},
		{"get /admin HTTP/1.1\r\n", sniff.HTTP1, nil},
		{"Delete /admin HTTP/1.1\r\n", sniff.HTTP1, nil},
		{"M-SEARCH * HTTP/1.1\r\n", sniff.HTTP1, nil},
		{"FOO http://backend/admin HTTP/1.1\r\n", sniff.HTTP1, nil},
		{"FOO HtTpS://backend/admin HTTP/1.1\r\n", sniff.HTTP1, nil},
		{"FOO htt", sniff.Unknown, sniff.ErrMore},
		{"connect backend:443 HTTP/1.1\r\n", sniff.HTTP1, nil},
		// What lenient servers accept around the request line.
		{"\r\n\r\nGET /admin HTTP/1.1\r\n", sniff.HTTP1, nil},
		{"GET\t/admin\tHTTP/1.1\r\n", sniff.HTTP1, nil},
		{"PURGE\t\t/admin HTTP/1.1\r\n", sniff.HTTP1, nil},
		{"   ", sniff.Unknown, sniff.ErrMore},
		{"PURGE ", sniff.Unknown, sniff.ErrMore},
		// However long the undecided prefix, a decision at MaxUndecided:
		// HTTP, for the strict parser to refuse.
		{strings.Repeat(" ", sniff.MaxUndecided), sniff.HTTP1, nil},
		{strings.Repeat("X", sniff.MaxUndecided-1), sniff.Unknown, sniff.ErrMore},
		{strings.Repeat("X", sniff.MaxUndecided+100), sniff.HTTP1, nil},
		// A long method is still a method.
		{string(bytes.Repeat([]byte("X"), 100)) + " /admin HTTP/1.1\r\n", sniff.HTTP1, nil},
		{sniff.H2Preface, sniff.HTTP2, nil},
		{sniff.H2Preface[:10], sniff.Unknown, sniff.ErrMore},
		// A preface that goes wrong is still a request line to a lenient
		// server: HTTP1, so the strict parser refuses it, never opaque.
		{"PRI * HTTP/2.0\r\n\r\nSX\r\n\r\n", sniff.HTTP1, nil},
		// Not HTTP: opaque.
		{"raw bytes \x01\x02\xff end", sniff.Unknown, nil},
		{"hello world", sniff.Unknown, nil},
		{"HELO backend\r\n", sniff.Unknown, nil},
		{"SSH-2.0-OpenSSH_9.2\r\n", sniff.Unknown, nil},
		{"\x16\x03\x01\x02\x00", sniff.Unknown, nil},
		{"\x00\x01\x02", sniff.Unknown, nil},
		{"GET/admin", sniff.Unknown, nil},
		{"*1\r\n$4\r\nPING\r\n", sniff.Unknown, nil},
	}
	for _, tt := range tests {
		got, err := sniff.App([]byte(tt.in))
		if got != tt.want || !errors.Is(err, tt.wantErr) {
			t.Errorf("App(%q) = %v, %v; want %v, %v", tt.in, got, err, tt.want, tt.wantErr)
		}
	}
}

// FuzzApp: App never panics, is stable as bytes arrive (once it decides,
// more bytes do not change the answer), and whatever Go's own HTTP server
// would read as a request is never classified as opaque.
func FuzzApp(f *testing.F) {
	for _, s := range []string{"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "PURGE /a HTTP/1.1\r\nHost: x\r\n\r\n", "get /x HTTP/1.0\r\n\r\n", sniff.H2Preface, "hello", "\x16\x03\x01", "OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		got, err := sniff.App(b)
		if err == nil {
			for n := 1; n < len(b); n++ {
				p, perr := sniff.App(b[:n])
				if perr == nil && p != got {
					t.Fatalf("App(%q) = %v but its prefix %q = %v", b, got, b[:n], p)
				}
			}
		}
		if _, rerr := http.ReadRequest(bufio.NewReader(bytes.NewReader(b))); rerr == nil {
			if err == nil && got == sniff.Unknown {
				t.Fatalf("Go reads %q as an HTTP request, App says opaque", b)
			}
		}
	})
}
