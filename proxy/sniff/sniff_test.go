package sniff_test

import (
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

// FuzzClientHelloALPN: the ClientHello parser never panics, and accepts
// only what starts like a TLS handshake record, with no empty protocol.
func FuzzClientHelloALPN(f *testing.F) {
	f.Add(clientHello(f, "mesh/1"))
	f.Add([]byte("GET / HTTP/1.1\r\n\r\n"))
	f.Add([]byte(sniff.H2Preface))
	f.Add([]byte{0x16, 0x03, 0x01, 0x00, 0x05, 0x01, 0x00, 0x00, 0x01, 0x00})
	f.Fuzz(func(t *testing.T, b []byte) {
		protos, err := sniff.ClientHelloALPN(b)
		if err == nil && (b[0] != 0x16 || b[1] != 0x03) {
			t.Fatalf("accepted a ClientHello that is not a TLS handshake record: % x", b[:min(len(b), 8)])
		}
		if err == nil {
			for _, p := range protos {
				if p == "" {
					t.Fatal("empty ALPN protocol accepted")
				}
			}
		}
	})
}
