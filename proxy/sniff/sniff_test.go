package sniff_test

import (
	"bytes"
	"crypto/tls"
	"errors"
	"net"
	"slices"
	"testing"
	"time"

	"github.com/mesh-dev/mesh/proxy/sniff"
)

// clientHello captures the ClientHello a real Go TLS client sends.
func clientHello(t testing.TB, alpn ...string) []byte {
	t.Helper()
	c, s := net.Pipe()
	go func() {
		_ = tls.Client(c, &tls.Config{NextProtos: alpn, InsecureSkipVerify: true, MinVersion: tls.VersionTLS13}).Handshake()
	}()
	_ = s.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 0, 4096)
	tmp := make([]byte, 4096)
	for {
		n, err := s.Read(tmp)
		buf = append(buf, tmp[:n]...)
		if _, aerr := sniff.ClientHelloALPN(buf); !errors.Is(aerr, sniff.ErrMore) || err != nil {
			break
		}
	}
	s.Close()
	c.Close()
	return buf
}

func TestDetect(t *testing.T) {
	hello := clientHello(t, "mesh/1")
	tests := []struct {
		in      string
		want    sniff.Protocol
		wantErr error
	}{
		{"", sniff.Unknown, sniff.ErrMore},
		{"GE", sniff.Unknown, sniff.ErrMore},
		{"GET / HTTP/1.1\r\n", sniff.HTTP1, nil},
		{"DELETE /x HTTP/1.1\r\n", sniff.HTTP1, nil},
		{"PRI * HTTP/2.0\r\n", sniff.Unknown, sniff.ErrMore},
		{sniff.H2Preface, sniff.HTTP2, nil},
		{string(hello[:1]), sniff.Unknown, sniff.ErrMore},
		{string(hello), sniff.TLS, nil},
		{"SSH-2.0-OpenSSH_9.2\r\n", sniff.Unknown, nil},
		{"\x00\x01\x02", sniff.Unknown, nil},
		{"GETX", sniff.Unknown, nil},
	}
	for _, tt := range tests {
		got, err := sniff.Detect([]byte(tt.in))
		if got != tt.want || !errors.Is(err, tt.wantErr) {
			t.Errorf("Detect(%q) = %v, %v; want %v, %v", tt.in, got, err, tt.want, tt.wantErr)
		}
	}
}

func TestClientHelloALPN(t *testing.T) {
	for _, alpn := range [][]string{{"mesh/1"}, {"h2", "http/1.1"}, nil} {
		hello := clientHello(t, alpn...)
		got, err := sniff.ClientHelloALPN(hello)
		if err != nil || !slices.Equal(got, alpn) {
			t.Errorf("ALPN of a Go ClientHello offering %v = %v, %v", alpn, got, err)
		}
		if _, err := sniff.ClientHelloALPN(hello[:len(hello)-1]); !errors.Is(err, sniff.ErrMore) {
			t.Errorf("truncated hello: %v, want ErrMore", err)
		}
	}
	if _, err := sniff.ClientHelloALPN([]byte("GET / HTTP/1.1\r\n")); err == nil || errors.Is(err, sniff.ErrMore) {
		t.Errorf("HTTP accepted as a ClientHello: %v", err)
	}
}

func TestParseRequestHead(t *testing.T) {
	h, err := sniff.ParseRequestHead([]byte("GET /healthz?x=1 HTTP/1.1\r\nHost: web:8080\r\nUser-Agent: kube-probe/1.37\r\n\r\nBODY"))
	if err != nil || h.Method != "GET" || h.Path != "/healthz?x=1" || h.Host != "web:8080" || h.Len != 74 {
		t.Fatalf("ParseRequestHead = %+v, %v", h, err)
	}
	for _, bad := range []string{
		"GET /x HTTP/1.1\r\n",                      // incomplete: ErrMore
		"get /x HTTP/1.1\r\n\r\n",                  // lower-case method
		"GET x HTTP/1.1\r\n\r\n",                   // not a path
		"GET /x HTTP/2.0\r\n\r\n",                  // wrong version
		"GET /x HTTP/1.1\r\nBad Header: x\r\n\r\n", // space in a header name
		"GET /x HTTP/1.1 extra\r\n\r\n",            // four parts
		"GET /x HTTP/1.1\r\nno-colon\r\n\r\n",      // no colon
		"GET /" + string(bytes.Repeat([]byte("a"), sniff.MaxHeadBytes)) + " HTTP/1.1\r\n\r\n", // too large
	} {
		if _, err := sniff.ParseRequestHead([]byte(bad)); err == nil {
			t.Errorf("ParseRequestHead(%.40q) accepted", bad)
		}
	}
}

// FuzzDetect: the detector and the ClientHello parser never panic, and
// TLS is claimed only for bytes that start like a TLS record.
func FuzzDetect(f *testing.F) {
	f.Add(clientHello(f, "mesh/1"))
	f.Add([]byte("GET / HTTP/1.1\r\n\r\n"))
	f.Add([]byte(sniff.H2Preface))
	f.Add([]byte{0x16, 0x03, 0x01, 0x00, 0x05, 0x01, 0x00, 0x00, 0x01, 0x00})
	f.Fuzz(func(t *testing.T, b []byte) {
		p, err := sniff.Detect(b)
		if p == sniff.TLS && (err != nil || b[0] != 0x16) {
			t.Fatalf("claimed TLS for % x", b[:min(len(b), 8)])
		}
		protos, err := sniff.ClientHelloALPN(b)
		if err == nil {
			for _, p := range protos {
				if p == "" {
					t.Fatal("empty ALPN protocol accepted")
				}
			}
		}
	})
}

// FuzzParseRequestHead: never panics; whatever parses has a method of
// capital letters, a path and a length inside the input.
func FuzzParseRequestHead(f *testing.F) {
	f.Add([]byte("GET / HTTP/1.1\r\nHost: a\r\n\r\n"))
	f.Add([]byte("POST /x HTTP/1.0\r\n\r\n"))
	f.Add([]byte("\r\n\r\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		h, err := sniff.ParseRequestHead(b)
		if err != nil {
			return
		}
		if h.Len > len(b) || h.Len > sniff.MaxHeadBytes || h.Method == "" || h.Path == "" {
			t.Fatalf("bad head %+v from %q", h, b)
		}
	})
}
