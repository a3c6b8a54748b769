// Package accepttest runs a test's accept loop: a listener that stands in
// for a server and hands each connection to the test, on a goroutine the
// test owns and waits for, so that nothing it started outlives the test.
package accepttest

import (
	"net"
	"sync"
	"testing"
)

// Serve accepts connections on ln until the test ends, passing each to
// handle in turn on one goroutine and closing it when handle returns. When
// the test ends, Serve's cleanup closes ln and waits for that goroutine: a
// handle that never returns (blocked on a full channel, say) hangs the
// test there.
func Serve(t testing.TB, ln net.Listener, handle func(net.Conn)) {
	t.Helper()
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return // ln closed by the cleanup below
			}
			handle(c)
			c.Close()
		}
	})
	t.Cleanup(func() {
		ln.Close()
		wg.Wait()
	})
}
