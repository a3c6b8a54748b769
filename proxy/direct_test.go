package proxy

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httptrace"
	"net/textproto"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// recordingRT counts the requests the fallback got.
type recordingRT struct {
	n  atomic.Int32
	rt http.RoundTripper
}

func (r *recordingRT) RoundTrip(req *http.Request) (*http.Response, error) {
	r.n.Add(1)
	return r.rt.RoundTrip(req)
}

// countingServer is an HTTP server on loopback that counts its
// connections.
func countingServer(t *testing.T, h http.Handler) (*httptest.Server, *atomic.Int32) {
	t.Helper()
	var conns atomic.Int32
	srv := httptest.NewUnstartedServer(h)
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			conns.Add(1)
		}
	}
	srv.Start()
	t.Cleanup(srv.Close)
	return srv, &conns
}

func newTestDirect(t *testing.T, maxIdle int, idle time.Duration) (*directTransport, *recordingRT) {
	t.Helper()
	tr := &http.Transport{DisableCompression: true}
	fb := &recordingRT{rt: tr}
	d := newDirectTransport(nil, fb, maxIdle, idle)
	t.Cleanup(d.CloseIdleConnections)
	return d, fb
}

func get(t *testing.T, rt http.RoundTripper, method, url string, edit func(*http.Request)) (*http.Response, string, error) {
	t.Helper()
	req, err := http.NewRequest(method, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	if edit != nil {
		edit(req)
	}
	resp, err := rt.RoundTrip(req)
	if err != nil {
		return nil, "", err
	}
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	return resp, string(b), err
}

// The direct path keeps its connection: many requests, one connection,
// whatever the response framing.
func TestDirectTransportReusesConnection(t *testing.T) {
	srv, conns := countingServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/chunked":
			w.Write([]byte("part1"))
			w.(http.Flusher).Flush()
			w.Write([]byte("part2"))
		case "/empty":
			w.WriteHeader(http.StatusNoContent)
		default:
			w.Header().Set("X-Method", r.Method)
			fmt.Fprintf(w, "%s %s", r.Method, r.URL.RequestURI())
		}
	}))
	d, fb := newTestDirect(t, 4, time.Minute)
	tests := []struct {
		method, path string
		status       int
		body         string
	}{
		{"GET", "/a?x=1", 200, "GET /a?x=1"},
		{"GET", "/chunked", 200, "part1part2"},
		{"HEAD", "/a", 200, ""},
		{"GET", "/empty", 204, ""},
		{"OPTIONS", "/a", 200, "OPTIONS /a"},
		{"GET", "/b", 200, "GET /b"},
	}
	for round := range 3 {
		for _, tt := range tests {
			resp, body, err := get(t, d, tt.method, srv.URL+tt.path, nil)
			if err != nil || resp.StatusCode != tt.status || body != tt.body {
				t.Fatalf("round %d: %s %s = %v, %q, %v; want %d %q", round, tt.method, tt.path, resp, body, err, tt.status, tt.body)
			}
		}
	}
	if n := conns.Load(); n != 1 {
		t.Errorf("%d connections to the app for sequential requests, want 1", n)
	}
	if n := fb.n.Load(); n != 0 {
		t.Errorf("the fallback got %d simple requests", n)
	}
}

// Anything but a plain request goes to the fallback, which sends it as
// http.Transport always did.
func TestDirectTransportFallsBack(t *testing.T) {
	srv, _ := countingServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		fmt.Fprintf(w, "%s %s", r.Method, b)
	}))
	tests := []struct {
		name   string
		method string
		edit   func(*http.Request)
	}{
		{"body", "POST", func(r *http.Request) {
			r.Body, r.ContentLength = io.NopCloser(strings.NewReader("hi")), 2
		}},
		{"GET with a body", "GET", func(r *http.Request) {
			r.Body, r.ContentLength = io.NopCloser(strings.NewReader("hi")), 2
		}},
		{"chunked body", "PUT", func(r *http.Request) {
			r.Body, r.ContentLength = io.NopCloser(strings.NewReader("hi")), -1
		}},
		{"DELETE: not repeatable", "DELETE", nil},
		{"POST without a body: not repeatable", "POST", nil},
		{"idempotency key", "POST", func(r *http.Request) { r.Header.Set("Idempotency-Key", "1") }},
		{"upgrade", "GET", func(r *http.Request) {
			r.Header.Set("Upgrade", "websocket")
			r.Header.Set("Connection", "Upgrade")
		}},
		{"expect", "GET", func(r *http.Request) { r.Header.Set("Expect", "100-continue") }},
		{"connection header", "GET", func(r *http.Request) { r.Header.Set("Connection", "x-foo") }},
		{"HTTP/1.0", "GET", func(r *http.Request) { r.Proto, r.ProtoMinor = "HTTP/1.0", 0 }},
		{"HTTP/2", "GET", func(r *http.Request) { r.Proto, r.ProtoMajor, r.ProtoMinor = "HTTP/2.0", 2, 0 }},
		{"close", "GET", func(r *http.Request) { r.Close = true }},
		{"trailer", "GET", func(r *http.Request) { r.Trailer = http.Header{"X-T": nil} }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d, fb := newTestDirect(t, 4, time.Minute)
			_, _, err := get(t, d, tt.method, srv.URL+"/", tt.edit)
			if n := fb.n.Load(); n != 1 {
				t.Errorf("fallback got %d requests (err %v), want 1", n, err)
			}
		})
	}
	// A header http.Transport refuses is refused the same way.
	for _, v := range []string{"a\x00b", "a\nX-Injected: 1", "a\rb"} {
		d, fb := newTestDirect(t, 4, time.Minute)
		_, _, err := get(t, d, "GET", srv.URL+"/", func(r *http.Request) { r.Header["X-Bad"] = []string{v} })
		if err == nil || fb.n.Load() != 1 || !strings.Contains(err.Error(), "invalid header field value") {
			t.Errorf("header value %q: err %v, fallback %d; want http.Transport's refusal", v, err, fb.n.Load())
		}
	}
	d, fb := newTestDirect(t, 4, time.Minute)
	if _, _, err := get(t, d, "GET", srv.URL+"/", func(r *http.Request) { r.Header["Bad Name"] = []string{"v"} }); err == nil || fb.n.Load() != 1 {
		t.Errorf("bad header name: err %v, fallback %d; want http.Transport's refusal", err, fb.n.Load())
	}
}

// rawBackend serves each connection with handle, on loopback.
func rawBackend(t *testing.T, handle func(n int, c net.Conn)) (string, *atomic.Int32) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var conns atomic.Int32
	var wg sync.WaitGroup
	t.Cleanup(func() {
		ln.Close()
		wg.Wait()
	})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			n := int(conns.Add(1))
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				_ = c.SetDeadline(time.Now().Add(10 * time.Second))
				handle(n, c)
			}()
		}
	}()
	return "http://" + ln.Addr().String(), &conns
}

// readRequest reads one request head from br.
func readRequest(br *bufio.Reader) (*http.Request, error) {
	r, err := http.ReadRequest(br)
	if err == nil {
		_, _ = io.Copy(io.Discard, r.Body)
	}
	return r, err
}

// A kept connection the application closed while idle: the request is
// sent again once, on a new connection; a new connection that fails is
// not retried.
func TestDirectTransportStaleConnection(t *testing.T) {
	const ok = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
	tests := []struct {
		name      string
		handle    func(n int, c net.Conn)
		wantErr   bool
		wantConns int32
	}{
		{"closed after one answer", func(_ int, c net.Conn) {
			br := bufio.NewReader(c)
			if _, err := readRequest(br); err == nil {
				io.WriteString(c, ok)
			}
		}, false, 2},
		{"reset after one answer", func(_ int, c net.Conn) {
			br := bufio.NewReader(c)
			if _, err := readRequest(br); err == nil {
				io.WriteString(c, ok)
			}
			_, _ = readRequest(br)
			c.(*net.TCPConn).SetLinger(0)
		}, false, 2},
		{"every connection fails after one answer", func(n int, c net.Conn) {
			br := bufio.NewReader(c)
			if _, err := readRequest(br); err == nil && n == 1 {
				io.WriteString(c, ok)
			}
		}, true, 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			url, conns := rawBackend(t, tt.handle)
			d, _ := newTestDirect(t, 4, time.Minute)
			if resp, body, err := get(t, d, "GET", url+"/1", nil); err != nil || resp.StatusCode != 200 || body != "ok" {
				t.Fatalf("first GET: %v %q %v", resp, body, err)
			}
			resp, body, err := get(t, d, "GET", url+"/2", nil)
			if tt.wantErr != (err != nil) || (!tt.wantErr && (resp.StatusCode != 200 || body != "ok")) {
				t.Fatalf("second GET: %v %q %v; want error %v", resp, body, err, tt.wantErr)
			}
			if n := conns.Load(); n != tt.wantConns {
				t.Errorf("%d connections, want %d", n, tt.wantConns)
			}
		})
	}
}

// What the application answers that is not one plain response.
func TestDirectTransportOddAnswers(t *testing.T) {
	tests := []struct {
		name     string
		answer   string
		wantErr  string
		wantBody string
		want1xx  []int
		// reusable: the next request may use the same connection.
		reusable bool
	}{
		{name: "early hints", answer: "HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
			wantBody: "ok", want1xx: []int{103}, reusable: true},
		{name: "unasked switch", answer: "HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\nConnection: Upgrade\r\n\r\nraw bytes",
			wantErr: "unexpected 101"},
		{name: "too many 1xx", answer: strings.Repeat("HTTP/1.1 102 Processing\r\n\r\n", 6) + "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
			wantErr: "unexpected 102", want1xx: []int{102, 102, 102, 102}},
		{name: "garbage", answer: "SSH-2.0-OpenSSH\r\n\r\n", wantErr: "malformed HTTP"},
		{name: "bytes after the response", answer: "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nxx",
			wantBody: "ok"},
		{name: "connection close", answer: "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok", wantBody: "ok"},
		{name: "HTTP/1.0 answer", answer: "HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok", wantBody: "ok"},
		{name: "read to close", answer: "HTTP/1.1 200 OK\r\n\r\nuntil the end", wantBody: "until the end"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			url, conns := rawBackend(t, func(n int, c net.Conn) {
				br := bufio.NewReader(c)
				if n == 1 {
					if _, err := readRequest(br); err != nil {
						return
					}
					io.WriteString(c, tt.answer)
					if strings.HasSuffix(tt.answer, "until the end") {
						return // closes: the end of the body
					}
				}
				// Then plain answers, for as long as the client asks.
				for {
					if _, err := readRequest(br); err != nil {
						return
					}
					io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nnext")
				}
			})
			d, _ := newTestDirect(t, 4, time.Minute)
			var got1xx []int
			resp, body, err := get(t, d, "GET", url+"/", func(r *http.Request) {
				*r = *r.WithContext(httptrace.WithClientTrace(r.Context(), &httptrace.ClientTrace{
					Got1xxResponse: func(code int, _ textproto.MIMEHeader) error {
						got1xx = append(got1xx, code)
						return nil
					},
				}))
			})
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v (%v %q), want %q", err, resp, body, tt.wantErr)
				}
			} else if err != nil || resp.StatusCode != 200 || body != tt.wantBody {
				t.Fatalf("= %v %q %v; want 200 %q", resp, body, err, tt.wantBody)
			}
			if fmt.Sprint(got1xx) != fmt.Sprint(tt.want1xx) {
				t.Errorf("1xx seen: %v, want %v", got1xx, tt.want1xx)
			}
			_, body, err = get(t, d, "GET", url+"/next", nil)
			if err != nil || body != "next" {
				t.Fatalf("next request: %q %v", body, err)
			}
			wantConns := int32(2)
			if tt.reusable {
				wantConns = 1
			}
			if n := conns.Load(); n != wantConns {
				t.Errorf("%d connections, want %d", n, wantConns)
			}
		})
	}
}

// A request whose client went away stops waiting for the application, and
// a response body closed early does not read the rest: neither
// connection is kept.
func TestDirectTransportGivesUp(t *testing.T) {
	release := make(chan struct{})
	defer close(release)
	url, conns := rawBackend(t, func(n int, c net.Conn) {
		br := bufio.NewReader(c)
		r, err := readRequest(br)
		if err != nil {
			return
		}
		switch r.URL.Path {
		case "/silent":
			select {
			case <-release:
			case <-time.After(10 * time.Second):
			}
		case "/endless":
			io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 1000000000\r\n\r\n")
			buf := make([]byte, 32<<10)
			for {
				if _, err := c.Write(buf); err != nil {
					return
				}
			}
		}
	})
	d, _ := newTestDirect(t, 4, time.Minute)

	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", url+"/silent", nil)
	start := time.Now()
	_, err := d.RoundTrip(req)
	if err == nil || !errors.Is(err, context.DeadlineExceeded) || time.Since(start) > 5*time.Second {
		t.Fatalf("silent app: err %v after %v; want the context's deadline, soon", err, time.Since(start))
	}

	req, _ = http.NewRequest("GET", url+"/endless", nil)
	resp, err := d.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(resp.Body, make([]byte, 1000)); err != nil {
		t.Fatal(err)
	}
	start = time.Now()
	resp.Body.Close()
	if time.Since(start) > 2*time.Second {
		t.Fatalf("closing an endless body took %v: it read the rest", time.Since(start))
	}
	d.mu.Lock()
	kept := len(d.idle)
	d.mu.Unlock()
	if kept != 0 || conns.Load() != 2 {
		t.Errorf("%d addresses with kept connections, %d connections; want none kept, 2", kept, conns.Load())
	}
}

// Connections beyond maxIdle are closed when done; kept ones are closed
// once idle for idleTimeout.
func TestDirectTransportIdleLimits(t *testing.T) {
	var open atomic.Int32
	hold := make(chan struct{})
	var held sync.WaitGroup
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/hold" {
			held.Done()
			<-hold
		}
		io.WriteString(w, "ok")
	}))
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		switch s {
		case http.StateNew:
			open.Add(1)
		case http.StateClosed, http.StateHijacked:
			open.Add(-1)
		}
	}
	srv.Start()
	defer srv.Close()
	d, _ := newTestDirect(t, 1, 200*time.Millisecond)

	const concurrent = 3
	held.Add(concurrent)
	errs := make(chan error, concurrent)
	for range concurrent {
		go func() {
			req, _ := http.NewRequest("GET", srv.URL+"/hold", nil)
			resp, err := d.RoundTrip(req)
			if err == nil {
				_, err = io.ReadAll(resp.Body)
				resp.Body.Close()
			}
			errs <- err
		}()
	}
	held.Wait()
	close(hold)
	for range concurrent {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	waitFor := func(what string, cond func() bool) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for !cond() {
			if time.Now().After(deadline) {
				t.Fatalf("%s: %d connections open", what, open.Load())
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	waitFor("only maxIdle kept", func() bool { return open.Load() == 1 })
	d.mu.Lock()
	kept := len(d.idle[strings.TrimPrefix(srv.URL, "http://")])
	d.mu.Unlock()
	if kept != 1 {
		t.Fatalf("%d kept, want 1", kept)
	}
	waitFor("idle timeout", func() bool { return open.Load() == 0 })
	d.mu.Lock()
	addrs := len(d.idle)
	d.mu.Unlock()
	if addrs != 0 {
		t.Errorf("%d addresses still listed after the idle timeout", addrs)
	}
	if _, body, err := get(t, d, "GET", srv.URL+"/", nil); err != nil || body != "ok" {
		t.Fatalf("after the idle timeout: %q %v", body, err)
	}
}

// A failed dial reaches the caller as the dialer's *net.OpError: how the
// inbound side tells that nothing reached the application.
func TestDirectTransportDialError(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	d, _ := newTestDirect(t, 4, time.Minute)
	_, _, err = get(t, d, "GET", "http://"+addr+"/", nil)
	var op *net.OpError
	if !errors.As(err, &op) || op.Op != "dial" {
		t.Fatalf("err = %#v, want a dial *net.OpError", err)
	}
}

// An application that sends bytes nobody asked for on a kept connection
// (a body after a HEAD, 204 or 304 answer, or a second response) must not
// have them read as the next request's response, which may be another
// client's: the connection is closed and the next request gets its own
// answer on a new one.
func TestDirectTransportUnsolicitedBytes(t *testing.T) {
	const smuggled = "HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nSECRET"
	tests := []struct {
		name, method, first string
		status              int
	}{
		{"body after HEAD", "HEAD", "HTTP/1.1 200 OK\r\nContent-Length: 40\r\n\r\n", 200},
		{"body after 204", "GET", "HTTP/1.1 204 No Content\r\n\r\n", 204},
		{"body after 304", "GET", "HTTP/1.1 304 Not Modified\r\nETag: \"x\"\r\n\r\n", 304},
		{"second response", "GET", "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", 200},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sent := make(chan struct{})
			url, conns := rawBackend(t, func(n int, c net.Conn) {
				br := bufio.NewReader(c)
				for i := 0; ; i++ {
					r, err := readRequest(br)
					if err != nil {
						return
					}
					if n == 1 && i == 0 {
						io.WriteString(c, tt.first)
						// After the answer is read: unasked bytes.
						time.Sleep(20 * time.Millisecond)
						io.WriteString(c, smuggled)
						close(sent)
						continue
					}
					fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s", len(r.URL.Path), r.URL.Path)
				}
			})
			d, _ := newTestDirect(t, 4, time.Minute)
			if resp, _, err := get(t, d, tt.method, url+"/a", nil); err != nil || resp.StatusCode != tt.status {
				t.Fatalf("first %s: %v %v", tt.method, resp, err)
			}
			<-sent
			resp, body, err := get(t, d, "GET", url+"/b", nil)
			if err != nil || resp.StatusCode != 200 || body != "/b" {
				t.Fatalf("the next request got %v %q %v; want its own answer, /b", resp, body, err)
			}
			if n := conns.Load(); n != 2 {
				t.Errorf("%d connections; want the tainted one closed and a second", n)
			}
		})
	}
}
