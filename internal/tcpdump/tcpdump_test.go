package tcpdump_test

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"testing"

	"github.com/mesh-dev/mesh/e2e/prereq"
	"github.com/mesh-dev/mesh/internal/tcpdump"
)

// TestCapture: the first packets after Start are in the capture, and
// Stop writes it out in full (the last ones too).
func TestCapture(t *testing.T) {
	prereq.Root(t)
	prereq.Command(t, "tcpdump")
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err == nil {
			_, _ = io.Copy(c, c)
			c.Close()
		}
	}()
	port := ln.Addr().(*net.TCPAddr).Port
	c := tcpdump.Start(t, "", "lo", "tcp", "port", fmt.Sprint(port))
	conn, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	first, last := []byte("first-marker-4f1c"), []byte("last-marker-9b2e")
	for _, m := range [][]byte{first, last} {
		if _, err := conn.Write(m); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(conn, make([]byte, len(m))); err != nil {
			t.Fatal(err)
		}
	}
	conn.Close()
	if err := c.Stop(); err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(c.Path)
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range [][]byte{first, last} {
		if n := bytes.Count(raw, m); n != 2 { // there and back
			t.Errorf("the capture holds %q %d times, want 2 (%d bytes; tcpdump: %s)", m, n, len(raw), c.Stderr())
		}
	}
	if err := c.Stop(); err != nil {
		t.Errorf("a second Stop: %v", err)
	}
}

// TestStartRefusesABadInterface: a capture that cannot start fails the
// test with tcpdump's own message, rather than hanging.
func TestStartRefusesABadInterface(t *testing.T) {
	prereq.Root(t)
	prereq.Command(t, "tcpdump")
	ft := &fatalRecorder{TB: t}
	done := make(chan struct{})
	go func() {
		defer close(done)
		tcpdump.Start(ft, "", "no-such-if0")
	}()
	<-done
	if !bytes.Contains([]byte(ft.msg), []byte("no-such-if0")) {
		t.Fatalf("Start on a missing interface: %q", ft.msg)
	}
}

// fatalRecorder records the first Fatalf and ends the goroutine, as
// testing.T does.
type fatalRecorder struct {
	testing.TB
	msg string
}

func (f *fatalRecorder) Fatalf(format string, args ...any) {
	f.msg = fmt.Sprintf(format, args...)
	runtime.Goexit()
}
