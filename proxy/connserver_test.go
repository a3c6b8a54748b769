package proxy

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"runtime"
	"strings"
	"testing"
	"time"
)

type testConnKey struct{}

// handed is a connection with a name the handler must see.
type handed struct {
	*closeNotifier
	name string
}

// TestConnServer: each connection handed over is served with its own data
// (ConnContext), serve returns only once the server closed it, a
// connection handed to a stopped server is closed at once, and stop leaves
// no goroutine behind.
func TestConnServer(t *testing.T) {
	before := runtime.NumGoroutine()
	s := newConnServer(&http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			h, _ := r.Context().Value(testConnKey{}).(*handed)
			if h == nil {
				http.Error(w, "no connection data", http.StatusInternalServerError)
				return
			}
			fmt.Fprintf(w, "%s %s", h.name, r.URL.Path)
		}),
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			return context.WithValue(ctx, testConnKey{}, c)
		},
	})
	runDone := make(chan struct{})
	go func() { defer close(runDone); s.run() }()

	for _, tc := range []struct {
		name, requests string
		want           []string
	}{
		{"one request, then close", "GET /a HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", []string{"one request, then close /a"}},
		{"two kept alive, then close", "GET /b HTTP/1.1\r\nHost: x\r\n\r\nGET /c HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", []string{"two kept alive, then close /b", "two kept alive, then close /c"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			client, server := tcpPair(t)
			defer client.Close()
			h := &handed{closeNotifier: &closeNotifier{Conn: server, closed: make(chan struct{})}, name: tc.name}
			served := make(chan bool, 1)
			go func() { served <- s.serve(h, h.closeNotifier) }()
			if _, err := io.WriteString(client, tc.requests); err != nil {
				t.Fatal(err)
			}
			br := bufio.NewReader(client)
			for _, want := range tc.want {
				resp, err := http.ReadResponse(br, nil)
				if err != nil {
					t.Fatal(err)
				}
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if resp.StatusCode != http.StatusOK || string(b) != want {
					t.Fatalf("%d %q; want 200 %q", resp.StatusCode, b, want)
				}
			}
			select {
			case ok := <-served:
				if !ok {
					t.Fatal("serve reported a stopped server")
				}
			case <-time.After(5 * time.Second):
				t.Fatal("serve did not return after the server closed the connection")
			}
		})
	}

	t.Run("open while stopped, then closed by its peer", func(t *testing.T) {
		client, server := tcpPair(t)
		h := &handed{closeNotifier: &closeNotifier{Conn: server, closed: make(chan struct{})}, name: "open"}
		served := make(chan bool, 1)
		go func() { served <- s.serve(h, h.closeNotifier) }()
		// A request answered proves the server has the connection.
		io.WriteString(client, "GET /d HTTP/1.1\r\nHost: x\r\n\r\n")
		resp, err := http.ReadResponse(bufio.NewReader(client), nil)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		// stop ends accepting without touching the open connection...
		s.stop()
		select {
		case <-served:
			t.Fatal("serve returned while its connection was open")
		case <-time.After(100 * time.Millisecond):
		}
		// ...which ends when its peer goes.
		client.Close()
		select {
		case <-served:
		case <-time.After(5 * time.Second):
			t.Fatal("serve did not return after the peer closed")
		}
	})

	t.Run("handed to a stopped server", func(t *testing.T) {
		client, server := tcpPair(t)
		defer client.Close()
		cn := &closeNotifier{Conn: server, closed: make(chan struct{})}
		if s.serve(cn, cn) {
			t.Fatal("a stopped server took a connection")
		}
		client.SetReadDeadline(time.Now().Add(5 * time.Second))
		if n, err := client.Read(make([]byte, 1)); n != 0 || err == nil || strings.Contains(err.Error(), "timeout") {
			t.Fatalf("read from the refused connection: %d, %v; want it closed", n, err)
		}
	})

	<-runDone
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > before {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			t.Fatalf("%d goroutines before, %d after:\n%s", before, runtime.NumGoroutine(), buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(20 * time.Millisecond)
	}
}
