package h1_test

import (
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/mesh-dev/mesh/proxy/h1"
)

// typicalHead is a 200-byte GET head such as a mesh client sends.
var typicalHead = func() string {
	h := "GET /api/v1/orders/12345?expand=items HTTP/1.1\r\n" +
		"Host: orders.shop.svc.cluster.local:8080\r\n" +
		"User-Agent: Go-http-client/1.1\r\n" +
		"Accept: application/json\r\n" +
		"X-Request-Id: 0f8e2a4c-1b7d\r\n"
	return h + "X-Pad: " + strings.Repeat("p", 200-len(h)-len("X-Pad: \r\n\r\n")) + "\r\n\r\n"
}()

// repeatConn is a connection whose peer sends the same bytes for ever, so
// the benchmark measures the gate, not a network.
type repeatConn struct {
	net.Conn
	data []byte
	off  int
}

func (c *repeatConn) Read(p []byte) (int, error) {
	n := 0
	for n < len(p) {
		k := copy(p[n:], c.data[c.off:])
		n += k
		c.off = (c.off + k) % len(c.data)
	}
	return n, nil
}

func BenchmarkGate(b *testing.B) {
	if len(typicalHead) != 200 {
		b.Fatalf("head is %d bytes", len(typicalHead))
	}
	for _, bc := range []struct {
		name string
		conn func(net.Conn) net.Conn
	}{
		{"raw", func(c net.Conn) net.Conn { return c }},
		{"gate", func(c net.Conn) net.Conn { return h1.NewGate(c, h1.Config{}) }},
	} {
		b.Run(bc.name, func(b *testing.B) {
			c := bc.conn(&repeatConn{data: []byte(typicalHead)})
			p := make([]byte, 4096)
			b.SetBytes(int64(len(typicalHead)))
			b.ReportAllocs()
			for b.Loop() {
				// One head per iteration: read until 200 bytes have come.
				for got := 0; got < len(typicalHead); {
					n, err := c.Read(p[:len(typicalHead)-got])
					if err != nil {
						b.Fatal(err)
					}
					got += n
				}
			}
		})
	}
}

// BenchmarkGateServer is a keep-alive request through a real net/http
// server on loopback, with and without the gate: the cost per request as
// the proxy will see it.
func BenchmarkGateServer(b *testing.B) {
	for _, gated := range []bool{false, true} {
		name := "raw"
		if gated {
			name = "gate"
		}
		b.Run(name, func(b *testing.B) {
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				b.Fatal(err)
			}
			var l net.Listener = ln
			if gated {
				l = gateListener{Listener: ln}
			}
			srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				_, _ = io.WriteString(w, "ok")
			}), ReadHeaderTimeout: 10 * time.Second}
			done := make(chan struct{})
			go func() {
				defer close(done)
				_ = srv.Serve(l)
			}()
			defer func() {
				_ = srv.Close()
				<-done
			}()
			tr := &http.Transport{}
			defer tr.CloseIdleConnections()
			client := &http.Client{Transport: tr}
			url := "http://" + ln.Addr().String() + "/bench"
			b.ReportAllocs()
			for b.Loop() {
				resp, err := client.Get(url)
				if err != nil {
					b.Fatal(err)
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
			}
		})
	}
}
