package h1_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"runtime"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/mesh-dev/mesh/proxy/h1"
)

// gateListener wraps every accepted connection in a Gate, as the proxy does.
type gateListener struct {
	net.Listener
	cfg h1.Config
}

func (l gateListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return h1.NewGate(c, l.cfg), nil
}

type gateKey struct{}

// recorder keeps what the handler was called with, in order.
type recorder struct {
	mu    sync.Mutex
	calls []string
	hosts []string // Host of every request the handler saw
}

func (r *recorder) add(call, host string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls = append(r.calls, call)
	r.hosts = append(r.hosts, host)
}

func (r *recorder) snapshot() (calls, hosts []string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.calls), slices.Clone(r.hosts)
}

// describe is what the handler received, the way tests compare it.
func describe(r *http.Request, body []byte) string {
	s := fmt.Sprintf("%s %s %s host=%q cl=%d te=%v body=%q", r.Method, r.RequestURI, r.Proto, r.Host, r.ContentLength, r.TransferEncoding, body)
	if x := r.Header.Get("X"); x != "" {
		s += fmt.Sprintf(" x=%q", x)
	}
	for _, k := range slices.Sorted(func(yield func(string) bool) {
		for k := range r.Trailer {
			if !yield(k) {
				return
			}
		}
	}) {
		s += fmt.Sprintf(" trailer %s=%q", k, r.Trailer.Get(k))
	}
	return s
}

// handler answers the way the proxy must: 400 with the reason for the
// gate's synthetic request; for an opaque request, either a switch of
// protocols (Upgrade: echo, which then echoes raw bytes) or a response
// after which the connection closes; otherwise a description of exactly
// what it received.
func handler(rec *recorder) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		g := r.Context().Value(gateKey{}).(*h1.Gate)
		if reason, ok := g.Rejected(r); ok {
			rec.add("rejected: "+reason, r.Host)
			w.Header().Set("Connection", "close")
			http.Error(w, "h1: "+reason, http.StatusBadRequest)
			return
		}
		if g.Opaque() {
			if r.Header.Get("Upgrade") == "echo" {
				rec.add("upgrade "+r.RequestURI, r.Host)
				echo(w)
				return
			}
			// Declined: nothing after this request may be read as HTTP.
			w = h1.CloseAfter(w)
		}
		body, err := io.ReadAll(r.Body)
		if err != nil {
			rec.add("body error: "+err.Error(), r.Host)
			http.Error(w, "body: "+err.Error(), http.StatusBadRequest)
			return
		}
		d := describe(r, body)
		rec.add(d, r.Host)
		_, _ = io.WriteString(w, d)
	})
}

// echo switches protocols and then returns every byte it reads, raw.
func echo(w http.ResponseWriter) {
	c, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		return
	}
	defer c.Close()
	_, _ = brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nUpgrade: echo\r\nConnection: Upgrade\r\n\r\n")
	if brw.Flush() != nil {
		return
	}
	_, _ = io.Copy(c, brw)
}

// checkGoroutines fails t if goroutines started during it are still
// running once its cleanups (registered after this) have run.
func checkGoroutines(t *testing.T) {
	before := runtime.NumGoroutine()
	t.Cleanup(func() {
		deadline := time.Now().Add(5 * time.Second)
		for runtime.NumGoroutine() > before && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
		if n := runtime.NumGoroutine(); n > before {
			buf := make([]byte, 1<<20)
			t.Errorf("%d goroutines leaked:\n%s", n-before, buf[:runtime.Stack(buf, true)])
		}
	})
}

// serve starts a real net/http server on loopback behind gates.
func serve(t *testing.T, cfg h1.Config) (string, *recorder) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	rec := &recorder{}
	var protos http.Protocols
	protos.SetHTTP1(true)
	protos.SetUnencryptedHTTP2(true)
	srv := &http.Server{
		Handler:           handler(rec),
		Protocols:         &protos,
		ReadHeaderTimeout: 10 * time.Second,
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			return context.WithValue(ctx, gateKey{}, c.(*h1.Gate))
		},
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.Serve(gateListener{Listener: ln, cfg: cfg})
	}()
	t.Cleanup(func() {
		_ = srv.Close()
		<-done
	})
	return ln.Addr().String(), rec
}

// exchange writes pieces (pausing between them), half-closes, and returns
// every response as "status body".
func exchange(t *testing.T, addr string, pieces []string, pause time.Duration) []string {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(20 * time.Second))
	for i, p := range pieces {
		if i > 0 && pause > 0 {
			time.Sleep(pause)
		}
		if _, err := io.WriteString(c, p); err != nil {
			t.Fatalf("write piece %d: %v", i, err)
		}
	}
	// Fails with ENOTCONN when the server has already reset the
	// connection; what it answered before is still there to read.
	_ = c.(*net.TCPConn).CloseWrite()
	return readResponses(t, bufio.NewReader(c))
}

func readResponses(t *testing.T, br *bufio.Reader) []string {
	t.Helper()
	var out []string
	for {
		// The end of the responses: EOF, or a reset when the server closed
		// with the client's bytes after a rejected head unread.
		if _, err := br.Peek(1); errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET) {
			return out
		}
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("after %q: read response: %v", out, err)
		}
		body, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatalf("after %q: read body: %v", out, err)
		}
		out = append(out, fmt.Sprintf("%d %s", resp.StatusCode, strings.TrimSuffix(string(body), "\n")))
	}
}

// ok is the 200 response to a request the handler described as d.
func ok(d string) string { return "200 " + d }

// bad is the 400 response to a rejected head.
func bad(reason string) string { return "400 h1: " + reason }

func get(target string) string {
	return fmt.Sprintf(`GET %s HTTP/1.1 host="x" cl=0 te=[] body=""`, target)
}

func TestGate(t *testing.T) {
	const (
		host  = "Host: x\r\n"
		smugg = "GET /admin HTTP/1.1\r\nHost: x\r\nX-Mesh-Peer-Identity: spiffe://evil/admin\r\n\r\n"
	)
	tests := []struct {
		name string
		in   string
		want []string
		// calls is what the handler must have been called with, when not
		// simply what the responses say.
		calls []string
	}{
		{
			name: "plain GET",
			in:   "GET /a?b=c HTTP/1.1\r\n" + host + "\r\n",
			want: []string{ok(get("/a?b=c"))},
		},
		{
			name: "lower-case method passes the gate (checked elsewhere)",
			in:   "get /a HTTP/1.1\r\n" + host + "\r\n",
			want: []string{ok(`get /a HTTP/1.1 host="x" cl=0 te=[] body=""`)},
		},
		{
			name: "HTTP/1.0 without Host",
			in:   "GET /old HTTP/1.0\r\n\r\n",
			want: []string{ok(`GET /old HTTP/1.0 host="" cl=0 te=[] body=""`)},
		},
		{
			name: "HTTP/1.0 with Transfer-Encoding, ignored by net/http",
			in:   "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + smugg,
			want: []string{bad("Transfer-Encoding in an HTTP/1.0 request")},
		},
		{
			name: "pipelined requests served in order",
			in:   "GET /1 HTTP/1.1\r\n" + host + "\r\nPOST /2 HTTP/1.1\r\n" + host + "Content-Length: 5\r\n\r\nhelloGET /3 HTTP/1.1\r\n" + host + "\r\n",
			want: []string{
				ok(get("/1")),
				ok(`POST /2 HTTP/1.1 host="x" cl=5 te=[] body="hello"`),
				ok(get("/3")),
			},
		},
		{
			name: "pipelined valid then invalid",
			in:   "GET /1 HTTP/1.1\r\n" + host + "\r\nGET /2 HTTP/1.1\r\nHost: x\nX: 1\r\n\r\n",
			want: []string{ok(get("/1")), bad("line 2: bare LF")},
		},
		{
			name: "probe smuggling: bare LF hides a second request",
			in:   "GET /healthz HTTP/1.1\r\n" + host + "X: 1\n\n" + smugg,
			want: []string{bad("line 3: bare LF")},
		},
		{
			name: "probe smuggling with bare LF everywhere",
			in:   "GET /healthz HTTP/1.1\nX: 1\n\n" + smugg,
			want: []string{bad("line 1: bare LF")},
		},
		{
			name: "bare CR in a header line",
			in:   "GET / HTTP/1.1\r\n" + host + "X: a\rY: b\r\n\r\n",
			want: []string{bad("line 3: bare CR")},
		},
		{
			name: "bare CR ending the request line",
			in:   "GET / HTTP/1.1\r" + host + "\r\n",
			want: []string{bad("line 1: bare CR")},
		},
		{
			name: "empty line before the request line",
			in:   "\r\nGET / HTTP/1.1\r\n" + host + "\r\n",
			want: []string{bad("line 1: empty line before the request line")},
		},
		{
			name: "two spaces in the request line",
			in:   "GET  / HTTP/1.1\r\n" + host + "\r\n",
			want: []string{bad("line 1: empty request-target")},
		},
		{
			name: "tab for space in the request line",
			in:   "GET\t/ HTTP/1.1\r\n" + host + "\r\n",
			want: []string{bad(`line 1: invalid character 0x09 in method`)},
		},
		{
			name: "non-ASCII request-target",
			in:   "GET /caf\xc3\xa9 HTTP/1.1\r\n" + host + "\r\n",
			want: []string{bad(`line 1: invalid character 0xc3 in request-target`)},
		},
		{
			name: "space inside the request-target",
			in:   "GET /a b HTTP/1.1\r\n" + host + "\r\n",
			want: []string{bad(`line 1: unsupported version "b HTTP/1.1"`)},
		},
		{
			name: "HTTP/1.2",
			in:   "GET / HTTP/1.2\r\n" + host + "\r\n",
			want: []string{bad(`line 1: unsupported version "HTTP/1.2"`)},
		},
		{
			name: "HTTP/2 prior-knowledge preface",
			in:   "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
			want: []string{bad(`line 1: unsupported version "HTTP/2.0"`)},
		},
		{
			name: "obs-fold",
			in:   "GET / HTTP/1.1\r\n" + host + "X: a\r\n b\r\n\r\n",
			want: []string{bad("line 4: obs-fold (line starts with whitespace)")},
		},
		{
			name: "space before the colon",
			in:   "GET / HTTP/1.1\r\nHost : x\r\n\r\n",
			want: []string{bad("line 2: whitespace before the colon")},
		},
		{
			name: "NUL in a value",
			in:   "GET / HTTP/1.1\r\n" + host + "X: a\x00b\r\n\r\n",
			want: []string{bad("line 3: NUL in field value")},
		},
		{
			name: "control character in a value",
			in:   "GET / HTTP/1.1\r\n" + host + "X: a\x0bb\r\n\r\n",
			want: []string{bad("line 3: control character 0x0b in field value")},
		},
		{
			name: "DEL in a value",
			in:   "GET / HTTP/1.1\r\n" + host + "X: a\x7f\r\n\r\n",
			want: []string{bad("line 3: control character 0x7f in field value")},
		},
		{
			name: "tab and obs-text in a value are fine",
			in:   "GET / HTTP/1.1\r\n" + host + "X: \ta\tb\xff \r\n\r\n",
			want: []string{ok(get("/") + ` x="a\tb\xff"`)},
		},
		{
			name: "header line without a colon",
			in:   "GET / HTTP/1.1\r\n" + host + "X\r\n\r\n",
			want: []string{bad("line 3: field line without a colon")},
		},
		{
			name: "HTTP/1.1 without Host",
			in:   "GET / HTTP/1.1\r\n\r\n",
			want: []string{bad("HTTP/1.1 request without Host")},
		},
		{
			name: "two Host headers",
			in:   "GET / HTTP/1.1\r\nHost: x\r\nhost: admin\r\n\r\n",
			want: []string{bad("line 3: two Host headers")},
		},
		{
			name: "CL.TE",
			in:   "POST / HTTP/1.1\r\n" + host + "Content-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nG" + smugg,
			want: []string{bad("both Content-Length and Transfer-Encoding")},
		},
		{
			name: "TE.CL",
			in:   "POST / HTTP/1.1\r\n" + host + "Transfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n5c\r\n" + smugg + "\r\n0\r\n\r\n",
			want: []string{bad("both Content-Length and Transfer-Encoding")},
		},
		{
			name: "TE.TE: chunked, identity",
			in:   "POST / HTTP/1.1\r\n" + host + "Transfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n" + smugg,
			want: []string{bad(`line 3: Transfer-Encoding "chunked, identity" is not exactly chunked`)},
		},
		{
			name: "TE.TE: xchunked",
			in:   "POST / HTTP/1.1\r\n" + host + "Transfer-Encoding: xchunked\r\n\r\n0\r\n\r\n" + smugg,
			want: []string{bad(`line 3: Transfer-Encoding "xchunked" is not exactly chunked`)},
		},
		{
			name: "TE.TE: two Transfer-Encoding headers",
			in:   "POST / HTTP/1.1\r\n" + host + "Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n0\r\n\r\n" + smugg,
			want: []string{bad("line 4: two Transfer-Encoding headers")},
		},
		{
			name: "TE.TE: folded onto the next line",
			in:   "POST / HTTP/1.1\r\n" + host + "Transfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n" + smugg,
			want: []string{bad(`line 3: Transfer-Encoding "" is not exactly chunked`)},
		},
		{
			name: "TE.TE: header line starting with a space",
			in:   "POST / HTTP/1.1\r\n" + host + " Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + smugg,
			want: []string{bad("line 3: obs-fold (line starts with whitespace)")},
		},
		{
			name: "TE.TE: space before the colon",
			in:   "POST / HTTP/1.1\r\n" + host + "Transfer-Encoding : chunked\r\n\r\n0\r\n\r\n" + smugg,
			want: []string{bad("line 3: whitespace before the colon")},
		},
		{
			name: "TE.TE: vertical tab after chunked",
			in:   "POST / HTTP/1.1\r\n" + host + "Transfer-Encoding: chunked\x0b\r\n\r\n0\r\n\r\n" + smugg,
			want: []string{bad("line 3: control character 0x0b in field value")},
		},
		{
			name: "Transfer-Encoding with OWS and upper case is chunked, for both parsers",
			in:   "POST /c HTTP/1.1\r\n" + host + "Transfer-Encoding: \t CHUNKED \r\n\r\n3\r\nabc\r\n0\r\n\r\nGET /after HTTP/1.1\r\n" + host + "\r\n",
			want: []string{ok(`POST /c HTTP/1.1 host="x" cl=-1 te=[chunked] body="abc"`), ok(get("/after"))},
		},
		{
			name: "duplicate Content-Length",
			in:   "POST / HTTP/1.1\r\n" + host + "Content-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
			want: []string{bad("line 4: two Content-Length headers")},
		},
		{
			name: "Content-Length list",
			in:   "POST / HTTP/1.1\r\n" + host + "Content-Length: 5, 5\r\n\r\nhello",
			want: []string{bad(`line 3: Content-Length "5, 5" is not a decimal number`)},
		},
		{
			name: "Content-Length with a sign",
			in:   "POST / HTTP/1.1\r\n" + host + "Content-Length: +5\r\n\r\nhello",
			want: []string{bad(`line 3: Content-Length "+5" is not a decimal number`)},
		},
		{
			name: "negative Content-Length",
			in:   "POST / HTTP/1.1\r\n" + host + "Content-Length: -1\r\n\r\n",
			want: []string{bad(`line 3: Content-Length "-1" is not a decimal number`)},
		},
		{
			name: "Content-Length with a space inside",
			in:   "POST / HTTP/1.1\r\n" + host + "Content-Length: 1 0\r\n\r\n0123456789",
			want: []string{bad(`line 3: Content-Length "1 0" is not a decimal number`)},
		},
		{
			name: "hex Content-Length",
			in:   "POST / HTTP/1.1\r\n" + host + "Content-Length: 0x5\r\n\r\nhello",
			want: []string{bad(`line 3: Content-Length "0x5" is not a decimal number`)},
		},
		{
			name: "empty Content-Length",
			in:   "POST / HTTP/1.1\r\n" + host + "Content-Length:\r\n\r\n",
			want: []string{bad("line 3: empty Content-Length")},
		},
		{
			name: "Content-Length overflow",
			in:   "POST / HTTP/1.1\r\n" + host + "Content-Length: 9223372036854775808\r\n\r\n",
			want: []string{bad("line 3: Content-Length overflows")},
		},
		{
			name: "Content-Length with OWS is fine",
			in:   "POST /p HTTP/1.1\r\n" + host + "Content-Length:  005 \r\n\r\nhelloGET /after HTTP/1.1\r\n" + host + "\r\n",
			want: []string{ok(`POST /p HTTP/1.1 host="x" cl=5 te=[] body="hello"`), ok(get("/after"))},
		},
		{
			name: "a body that looks like a bad head passes as body",
			in:   "POST /p HTTP/1.1\r\n" + host + "Content-Length: 11\r\n\r\nX: 1\n\nGET /GET /after HTTP/1.1\r\n" + host + "\r\n",
			want: []string{ok(`POST /p HTTP/1.1 host="x" cl=11 te=[] body="X: 1\n\nGET /"`), ok(get("/after"))},
		},
		{
			name: "chunked with extensions and trailers",
			in: "POST /c HTTP/1.1\r\n" + host + "Transfer-Encoding: chunked\r\nTrailer: X-Sum\r\n\r\n" +
				"5;name=\"q;\\\"v\"\r\nhello\r\n6;a;b=c\r\n world\r\n0\r\nX-Sum: 42\r\n\r\n" +
				"GET /after HTTP/1.1\r\n" + host + "\r\n",
			want: []string{
				ok(`POST /c HTTP/1.1 host="x" cl=-1 te=[chunked] body="hello world" trailer X-Sum="42"`),
				ok(get("/after")),
			},
		},
		{
			name: "bare LF in a chunk-size line",
			in:   "POST /c HTTP/1.1\r\n" + host + "Transfer-Encoding: chunked\r\n\r\n5\nhello\r\n0\r\n\r\n" + smugg,
			want: []string{"400 body: h1: chunked body: bare LF in chunk-size line"},
		},
		{
			name: "bare LF after chunk data",
			in:   "POST /c HTTP/1.1\r\n" + host + "Transfer-Encoding: chunked\r\n\r\n5\r\nhello\n0\r\n\r\n" + smugg,
			want: []string{"400 body: h1: chunked body: chunk data not followed by CRLF"},
		},
		{
			name: "chunk longer than its size",
			in:   "POST /c HTTP/1.1\r\n" + host + "Transfer-Encoding: chunked\r\n\r\n3\r\nhello\r\n0\r\n\r\n" + smugg,
			want: []string{"400 body: h1: chunked body: chunk data not followed by CRLF"},
		},
		{
			name: "chunk size with 17 hex digits",
			in:   "POST /c HTTP/1.1\r\n" + host + "Transfer-Encoding: chunked\r\n\r\n00000000000000005\r\nhello\r\n0\r\n\r\n" + smugg,
			want: []string{"400 body: h1: chunked body: chunk size longer than 16 hex digits"},
		},
		{
			name: "chunk size overflow",
			in:   "POST /c HTTP/1.1\r\n" + host + "Transfer-Encoding: chunked\r\n\r\n8000000000000000\r\nhello\r\n0\r\n\r\n" + smugg,
			want: []string{"400 body: h1: chunked body: chunk size overflows"},
		},
		{
			name: "whitespace after the chunk size",
			in:   "POST /c HTTP/1.1\r\n" + host + "Transfer-Encoding: chunked\r\n\r\n5 \r\nhello\r\n0\r\n\r\n" + smugg,
			want: []string{"400 body: h1: chunked body: invalid character 0x20 after chunk size"},
		},
		{
			name: "negative chunk size",
			in:   "POST /c HTTP/1.1\r\n" + host + "Transfer-Encoding: chunked\r\n\r\n-5\r\nhello\r\n0\r\n\r\n" + smugg,
			want: []string{"400 body: h1: chunked body: chunk size is not a hex number"},
		},
		{
			name: "obs-fold in a trailer",
			in:   "POST /c HTTP/1.1\r\n" + host + "Transfer-Encoding: chunked\r\n\r\n0\r\nX: a\r\n b\r\n\r\n" + smugg,
			want: []string{"400 body: h1: chunked body: trailer line 3: obs-fold (line starts with whitespace)"},
		},
		{
			name: "Content-Length in a trailer",
			in:   "POST /c HTTP/1.1\r\n" + host + "Transfer-Encoding: chunked\r\n\r\n0\r\nContent-Length: 5\r\n\r\nhello" + smugg,
			want: []string{"400 body: h1: chunked body: trailer line 2: Content-Length in a trailer"},
		},
		{
			name: "declined upgrade closes the connection",
			in:   "GET /ws HTTP/1.1\r\n" + host + "Upgrade: websocket\r\nConnection: Upgrade\r\n\r\n" + smugg,
			want: []string{ok(get("/ws"))},
		},
		{
			name: "CONNECT is opaque, declined, closed",
			in:   "CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n" + smugg,
			want: []string{ok(`CONNECT example.com:443 HTTP/1.1 host="example.com:443" cl=0 te=[] body=""`)},
		},
		{
			name: "a client cannot name the synthetic host before a rejection",
			in:   "GET / HTTP/1.1\r\nHost: rejected-AAAAAAAAAAAAAAAAAAAAAAAAAA.h1.invalid\r\n\r\n",
			want: []string{ok(`GET / HTTP/1.1 host="rejected-AAAAAAAAAAAAAAAAAAAAAAAAAA.h1.invalid" cl=0 te=[] body=""`)},
		},
		{
			name: "oversized head is answered",
			in:   "GET / HTTP/1.1\r\n" + host + "X: " + strings.Repeat("a", 70000) + "\r\n\r\n",
			want: []string{bad("head longer than 65536 bytes")},
		},
		{
			name: "head of exactly the bound",
			in:   "GET / HTTP/1.1\r\n" + host + "X: " + strings.Repeat("a", 65536-16-9-3-4) + "\r\n\r\n",
			want: []string{ok(get("/") + fmt.Sprintf(" x=%q", strings.Repeat("a", 65536-16-9-3-4)))},
		},
	}
	checkGoroutines(t)
	addr, rec := serve(t, h1.Config{})
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before, _ := rec.snapshot()
			got := exchange(t, addr, []string{tt.in}, 0)
			if !slices.Equal(got, tt.want) {
				t.Errorf("responses:\n got %q\nwant %q", got, tt.want)
			}
			calls := tt.calls
			if calls == nil {
				for _, w := range tt.want {
					switch {
					case strings.HasPrefix(w, "200 "):
						calls = append(calls, strings.TrimPrefix(w, "200 "))
					case strings.HasPrefix(w, "400 h1: "):
						calls = append(calls, "rejected: "+strings.TrimPrefix(w, "400 h1: "))
					case strings.HasPrefix(w, "400 body: "):
						calls = append(calls, "body error: "+strings.TrimPrefix(w, "400 body: "))
					}
				}
			}
			after, _ := rec.snapshot()
			if gotCalls := after[len(before):]; !slices.Equal(gotCalls, calls) {
				t.Errorf("handler calls:\n got %q\nwant %q", gotCalls, calls)
			}
		})
	}
}
