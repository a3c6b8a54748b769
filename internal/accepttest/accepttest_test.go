package accepttest_test

import (
	"bufio"
	"io"
	"net"
	"testing"
	"time"

	"github.com/mesh-dev/mesh/internal/accepttest"
)

// TestServe: each connection reaches the handler in turn and is closed
// after it; once the test has ended the listener is closed and no handler
// runs.
func TestServe(t *testing.T) {
	var addr string
	got := make(chan string, 2)
	t.Run("serve", func(t *testing.T) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr = ln.Addr().String()
		accepttest.Serve(t, ln, func(c net.Conn) {
			_ = c.SetDeadline(time.Now().Add(2 * time.Second))
			line, _ := bufio.NewReader(c).ReadString('\n')
			got <- line
			_, _ = io.WriteString(c, "ok\n")
		})
		for _, msg := range []string{"one\n", "two\n"} {
			c, err := net.DialTimeout("tcp", addr, 2*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			_ = c.SetDeadline(time.Now().Add(2 * time.Second))
			if _, err := io.WriteString(c, msg); err != nil {
				t.Fatal(err)
			}
			r := bufio.NewReader(c)
			if reply, err := r.ReadString('\n'); err != nil || reply != "ok\n" {
				t.Fatalf("reply %q, %v; want ok", reply, err)
			}
			// Serve closes the connection once the handler returns.
			if b, err := r.ReadByte(); err != io.EOF {
				t.Fatalf("read %q, %v after the handler returned; want EOF", b, err)
			}
			if l := <-got; l != msg {
				t.Fatalf("handler got %q, want %q", l, msg)
			}
		}
	})
	// The subtest's cleanups have run: Serve's closed the listener and
	// waited for its loop.
	if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
		c.Close()
		t.Fatalf("dial %s after the test ended succeeded; want the listener closed", addr)
	}
	select {
	case l := <-got:
		t.Fatalf("a handler ran after the test ended: %q", l)
	default:
	}
}
