package h1_test

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/mesh-dev/mesh/proxy/h1"
)

func dial(t *testing.T, addr string) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	_ = c.SetDeadline(time.Now().Add(20 * time.Second))
	return c
}

// send writes raw to c and reads the first response; br holds what the
// server sent after it.
func send(t *testing.T, c net.Conn, raw string) (br *bufio.Reader, resp *http.Response) {
	t.Helper()
	if _, err := io.WriteString(c, raw); err != nil {
		t.Fatal(err)
	}
	br = bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	return br, resp
}

// Slowloris-style delivery, a byte at a time, still serves every request,
// and a head cut anywhere is never served early.
func TestGateByteAtATime(t *testing.T) {
	checkGoroutines(t)
	addr, rec := serve(t, h1.Config{})
	in := "POST /slow HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3;e=1\r\nabc\r\n0\r\nT: v\r\n\r\n" +
		"GET /next HTTP/1.1\r\nHost: x\r\n\r\n"
	got := exchange(t, addr, strings.Split(in, ""), time.Millisecond)
	want := []string{
		ok(`POST /slow HTTP/1.1 host="x" cl=-1 te=[chunked] body="abc" trailer T="v"`),
		ok(get("/next")),
	}
	if !slices.Equal(got, want) {
		t.Errorf("responses:\n got %q\nwant %q", got, want)
	}
	if calls, _ := rec.snapshot(); len(calls) != 2 {
		t.Errorf("handler called %d times, want 2: %q", len(calls), calls)
	}
}

// After an Upgrade the bytes are not HTTP: the gate passes them untouched,
// however much they look like bad HTTP, and the handler sees Opaque.
func TestGateUpgradePassesFramesUntouched(t *testing.T) {
	checkGoroutines(t)
	addr, rec := serve(t, h1.Config{})
	c := dial(t, addr)
	br, resp := send(t, c, "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: echo\r\nConnection: Upgrade\r\n\r\n")
	if resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("status %d, want 101", resp.StatusCode)
	}
	frames := [][]byte{
		{0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58}, // a masked WebSocket text frame
		[]byte("GET /admin HTTP/1.1\nHost: x\n\n"),
		[]byte("\x00\r\r\n\n Transfer-Encoding: chunked\r\n\r\n"),
		bytes.Repeat([]byte{0xff}, 100000),
	}
	for _, f := range frames {
		if _, err := c.Write(f); err != nil {
			t.Fatal(err)
		}
		back := make([]byte, len(f))
		if _, err := io.ReadFull(br, back); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(back, f) {
			t.Errorf("echoed %q, sent %q", back[:min(len(back), 64)], f[:min(len(f), 64)])
		}
	}
	calls, _ := rec.snapshot()
	if want := []string{"upgrade /ws"}; !slices.Equal(calls, want) {
		t.Errorf("handler calls %q, want %q", calls, want)
	}
}

// A client that sends Expect: 100-continue waits for the 100 before its
// body; the gate must hand over the head alone and let the body follow.
func TestGateExpectContinue(t *testing.T) {
	checkGoroutines(t)
	addr, _ := serve(t, h1.Config{})
	c := dial(t, addr)
	br, resp := send(t, c, "PUT /up HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
	if resp.StatusCode != http.StatusContinue {
		t.Fatalf("status %d, want 100", resp.StatusCode)
	}
	if _, err := io.WriteString(c, "hello"); err != nil {
		t.Fatal(err)
	}
	_ = c.(*net.TCPConn).CloseWrite()
	got := readResponses(t, br)
	want := []string{ok(`PUT /up HTTP/1.1 host="x" cl=5 te=[] body="hello"`)}
	if !slices.Equal(got, want) {
		t.Errorf("responses:\n got %q\nwant %q", got, want)
	}
}

// The synthetic request's host is per gate and unguessable: a client that
// learnt the host of one rejection (it never should) cannot use it on
// another connection to pass for a rejection, nor for anything else.
func TestGateRejectionCannotBeForged(t *testing.T) {
	checkGoroutines(t)
	addr, rec := serve(t, h1.Config{})
	exchange(t, addr, []string{"GET / HTTP/1.1\r\nHost: x\nX: 1\r\n\r\n"}, 0)
	exchange(t, addr, []string{"GET / HTTP/1.1\r\nHost: x\nX: 1\r\n\r\n"}, 0)
	_, hosts := rec.snapshot()
	if len(hosts) != 2 || hosts[0] == hosts[1] || !strings.HasSuffix(hosts[0], ".h1.invalid") {
		t.Fatalf("synthetic hosts %q: want two different *.h1.invalid", hosts)
	}
	in := "GET /forged HTTP/1.1\r\nHost: " + hosts[0] + "\r\n\r\n"
	got := exchange(t, addr, []string{in}, 0)
	want := []string{ok(fmt.Sprintf(`GET /forged HTTP/1.1 host=%q cl=0 te=[] body=""`, hosts[0]))}
	if !slices.Equal(got, want) {
		t.Errorf("forged host on a fresh connection: %q, want %q", got, want)
	}
}

// A smaller bound applies to the head and to the trailer section.
func TestGateMaxHeadBytes(t *testing.T) {
	checkGoroutines(t)
	addr, _ := serve(t, h1.Config{MaxHeadBytes: 64})
	head := func(n int) string { // a head of exactly n bytes
		return "GET / HTTP/1.1\r\nHost: x\r\nX: " + strings.Repeat("a", n-32) + "\r\n\r\n"
	}
	tests := []struct {
		name string
		in   string
		want []string
	}{
		{"at the bound", head(64), []string{ok(get("/") + fmt.Sprintf(" x=%q", strings.Repeat("a", 32)))}},
		{"one over", head(65), []string{bad("head longer than 64 bytes")}},
		{
			"trailer over the bound",
			"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX: " + strings.Repeat("a", 2000) + "\r\n\r\n",
			[]string{"400 body: h1: chunked body: last chunk and trailer longer than 1024 bytes"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := exchange(t, addr, []string{tt.in}, 0); !slices.Equal(got, tt.want) {
				t.Errorf("got %q\nwant %q", got, tt.want)
			}
		})
	}
}

// readUntil reads g with tiny buffers until it has n bytes or an error.
func readUntil(g *h1.Gate, n int, bufSize int) ([]byte, error) {
	var out []byte
	p := make([]byte, bufSize)
	for len(out) < n {
		k, err := g.Read(p)
		out = append(out, p[:k]...)
		if err != nil {
			return out, err
		}
	}
	return out, nil
}

// The gate keeps its state across short reads and timeouts, as net/http's
// aborted background read produces them, and never hands out part of a
// head before all of it is accepted.
func TestGatePartialReadsAndTimeouts(t *testing.T) {
	checkGoroutines(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	client := dial(t, ln.Addr().String())
	server, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer server.Close()
	g := h1.NewGate(server, h1.Config{})

	head := "POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\n"
	next := "GET /n HTTP/1.1\r\nHost: x\r\n\r\n"
	stream := head + "body" + next
	split := []int{1, 17, len(head) - 1, len(head) + 2, len(head) + 4 + 5, len(stream)}
	var got []byte
	sent := 0
	for _, end := range split {
		if _, err := io.WriteString(client, stream[sent:end]); err != nil {
			t.Fatal(err)
		}
		sent = end
		// What may come out now: whole heads, and body bytes after them.
		avail := 0
		switch {
		case sent >= len(stream):
			avail = len(stream)
		case sent >= len(head):
			avail = min(sent, len(head)+4)
		}
		// net/http's abort: a deadline in the past while a read waits.
		for range 2 {
			_ = g.SetReadDeadline(time.Now().Add(2 * time.Second))
			more, err := readUntil(g, avail-len(got), 1)
			got = append(got, more...)
			if avail > len(got) || err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
				t.Fatalf("after %d bytes sent: read %q, err %v; want %q", sent, got, err, stream[:avail])
			}
			if !strings.HasPrefix(stream[:avail], string(got)) || len(got) > avail {
				t.Fatalf("after %d bytes sent: read %q, beyond what may pass %q", sent, got, stream[:avail])
			}
			// Nothing more may come out until more is sent.
			_ = g.SetReadDeadline(time.Now().Add(-time.Second))
			if n, err := g.Read(make([]byte, 64)); n != 0 || !errors.Is(err, os.ErrDeadlineExceeded) {
				t.Fatalf("after %d bytes sent: read %d bytes, %v; want a timeout", sent, n, err)
			}
		}
	}
	if string(got) != stream {
		t.Errorf("read %q, want %q", got, stream)
	}
	_ = g.SetReadDeadline(time.Time{})
	_ = client.(*net.TCPConn).CloseWrite()
	if n, err := g.Read(make([]byte, 8)); n != 0 || err != io.EOF {
		t.Errorf("at the end: %d, %v; want EOF", n, err)
	}
}

// A violation in a chunked body fails every later read, so nothing after
// it can be read as a request.
func TestGateBodyErrorIsSticky(t *testing.T) {
	c1, c2 := net.Pipe()
	defer c1.Close()
	defer c2.Close()
	g := h1.NewGate(c2, h1.Config{})
	in := "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\n\nGET /x HTTP/1.1\r\nHost: x\r\n\r\n"
	go func() { _, _ = io.WriteString(c1, in) }()
	got, err := readUntil(g, len(in), 512)
	var se *h1.SyntaxError
	if !errors.As(err, &se) || se.Reason() != "chunked body: chunk data not followed by CRLF" {
		t.Fatalf("err %v, want the chunk data violation", err)
	}
	if want := in[:strings.Index(in, "ab")+2]; string(got) != want {
		t.Errorf("passed %q, want %q", got, want)
	}
	for range 3 {
		if n, err2 := g.Read(make([]byte, 64)); n != 0 || err2 != err {
			t.Fatalf("later read: %d, %v; want 0, %v", n, err2, err)
		}
	}
}

// net/http reads through the gate and sees no difference on valid traffic;
// the test also exercises the concurrency net/http brings (background
// reads, Rejected and Opaque from handlers) under -race.
func TestGateManyConnections(t *testing.T) {
	checkGoroutines(t)
	addr, _ := serve(t, h1.Config{})
	tr := &http.Transport{MaxConnsPerHost: 4}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: 10 * time.Second}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	errs := make(chan error, 8)
	for w := range 8 {
		go func() {
			for i := range 25 {
				body := strings.Repeat("b", w*i)
				req, _ := http.NewRequestWithContext(ctx, http.MethodPost, fmt.Sprintf("http://%s/w%d/%d", addr, w, i), strings.NewReader(body))
				if i%2 == 0 {
					req.ContentLength = -1 // chunked
				}
				resp, err := client.Do(req)
				if err != nil {
					errs <- err
					return
				}
				got, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if !strings.Contains(string(got), fmt.Sprintf("/w%d/%d ", w, i)) || !strings.Contains(string(got), fmt.Sprintf("body=%q", body)) {
					errs <- fmt.Errorf("w%d/%d: got %q", w, i, got)
					return
				}
			}
			errs <- nil
		}()
	}
	for range 8 {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
}
