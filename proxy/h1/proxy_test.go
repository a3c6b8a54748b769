package h1_test

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mesh-dev/mesh/proxy/h1"
)

// The gate in front of a ReverseProxy, as the sidecar uses it: an upgrade
// the app accepts switches end to end and the 101 is clean; one the app
// declines ends the connection, so a request pipelined after it never
// reaches the app.
func TestGateReverseProxyUpgrade(t *testing.T) {
	checkGoroutines(t)
	var mu sync.Mutex
	var appSaw []string
	app := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		appSaw = append(appSaw, r.Method+" "+r.RequestURI)
		mu.Unlock()
		if r.Header.Get("Upgrade") != "echo" {
			http.Error(w, "no upgrade here", http.StatusForbidden)
			return
		}
		echo(w)
	}), ReadHeaderTimeout: 10 * time.Second}
	appLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	appDone := make(chan struct{})
	go func() {
		defer close(appDone)
		_ = app.Serve(appLn)
	}()
	t.Cleanup(func() {
		_ = app.Close()
		<-appDone
	})

	tr := &http.Transport{}
	t.Cleanup(tr.CloseIdleConnections)
	rp := &httputil.ReverseProxy{
		Rewrite:   func(pr *httputil.ProxyRequest) { pr.SetURL(&url.URL{Scheme: "http", Host: appLn.Addr().String()}) },
		Transport: tr,
	}
	front := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			g := r.Context().Value(gateKey{}).(*h1.Gate)
			if reason, ok := g.Rejected(r); ok {
				http.Error(w, reason, http.StatusBadRequest)
				return
			}
			if g.Opaque() {
				w = h1.CloseAfter(w)
			}
			rp.ServeHTTP(w, r)
		}),
		ReadHeaderTimeout: 10 * time.Second,
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			return context.WithValue(ctx, gateKey{}, c.(*h1.Gate))
		},
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = front.Serve(gateListener{Listener: ln})
	}()
	t.Cleanup(func() {
		_ = front.Close()
		<-done
	})
	addr := ln.Addr().String()

	t.Run("accepted", func(t *testing.T) {
		c := dial(t, addr)
		br, resp := send(t, c, "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: echo\r\nConnection: Upgrade\r\n\r\n")
		if resp.StatusCode != http.StatusSwitchingProtocols || !slices.Equal(resp.Header.Values("Connection"), []string{"Upgrade"}) {
			t.Fatalf("got %d, Connection %q; want 101, Connection [Upgrade]", resp.StatusCode, resp.Header.Values("Connection"))
		}
		frame := "GET /admin HTTP/1.1\nHost: x\n\n\x00raw"
		if _, err := io.WriteString(c, frame); err != nil {
			t.Fatal(err)
		}
		back := make([]byte, len(frame))
		if _, err := io.ReadFull(br, back); err != nil || string(back) != frame {
			t.Fatalf("echoed %q, %v; want %q", back, err, frame)
		}
	})
	t.Run("declined", func(t *testing.T) {
		in := "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: nope\r\nConnection: Upgrade\r\n\r\n" +
			"GET /admin HTTP/1.1\r\nHost: x\r\n\r\n"
		got := exchange(t, addr, []string{in}, 0)
		if want := []string{"403 no upgrade here"}; !slices.Equal(got, want) {
			t.Errorf("responses %q, want %q", got, want)
		}
	})
	mu.Lock()
	defer mu.Unlock()
	if want := []string{"GET /ws", "GET /ws"}; !slices.Equal(appSaw, want) {
		t.Errorf("the app saw %q, want %q", appSaw, want)
	}
	if strings.Contains(strings.Join(appSaw, ","), "admin") {
		t.Errorf("a request after the upgrade reached the app")
	}
}
