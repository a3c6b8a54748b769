package proxy_test

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/mesh-dev/mesh/proxy"
)

// directApp is the test application's handler under /d/ for the direct
// path's tests (direct.go): it answers "path=P body=B" with the body it
// read, and misbehaves as the query asks:
//
//	sleep=D       answer after D (at most 2s)
//	status=N      answer N (204 and 304 without a body)
//	then=close    send "Connection: close" with the response
//	then=hangup   close the connection after a response framed by
//	              Content-Length, without saying so
//	then=later    the same, 300ms after the response: a pipelined request
//	              sent meanwhile is on the connection when it closes
//	then=eof      a response framed by the connection's close
//	then=extra    a second, unasked response right after the first, the
//	              connection kept open
func directApp(log *appLog) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(io.LimitReader(r.Body, 1<<20))
		log.add(received{Port: httpPort, Remote: r.RemoteAddr, Method: r.Method, RequestURI: r.RequestURI, Header: r.Header, Body: string(body)})
		q := r.URL.Query()
		if d, err := time.ParseDuration(q.Get("sleep")); err == nil {
			time.Sleep(min(d, 2*time.Second))
		}
		msg := fmt.Sprintf("path=%s body=%s", r.URL.Path, body)
		then := q.Get("then")
		switch then {
		case "hangup", "later", "eof", "extra":
			c, rw, err := http.NewResponseController(w).Hijack()
			if err != nil {
				return
			}
			defer c.Close()
			switch then {
			case "eof":
				fmt.Fprintf(rw, "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n%s", msg)
			case "extra":
				fmt.Fprintf(rw, "HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%sHTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nforged", len(msg), msg)
			default:
				fmt.Fprintf(rw, "HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s", len(msg), msg)
			}
			_ = rw.Flush()
			switch then {
			case "later":
				time.Sleep(300 * time.Millisecond)
			case "extra":
				// Open long enough for the next request to be sent.
				time.Sleep(time.Second)
			}
			return
		case "close":
			w.Header().Set("Connection", "close")
		}
		if s, err := strconv.Atoi(q.Get("status")); err == nil && s >= 200 && s <= 599 {
			w.WriteHeader(s)
			if s == http.StatusNoContent || s == http.StatusNotModified {
				return
			}
		}
		w.Header().Set("Content-Length", strconv.Itoa(len(msg)))
		_, _ = io.WriteString(w, msg)
	})
}

// gotResponse is one final response the raw client read back.
type gotResponse struct {
	status int
	body   string
	// length is the Content-Length header as sent ("" when absent).
	length string
}

// readResponses reads out, what the raw client read back, as the final
// responses to requests with the given methods, in order (1xx responses
// are skipped), and returns them with whatever bytes follow the last.
func readResponses(out string, methods []string) ([]gotResponse, string, error) {
	br := bufio.NewReader(strings.NewReader(out))
	var got []gotResponse
	for _, m := range methods {
		var resp *http.Response
		for n := 0; ; n++ {
			var err error
			resp, err = http.ReadResponse(br, &http.Request{Method: m})
			if err != nil {
				return got, "", fmt.Errorf("response %d (%s): %w", len(got)+1, m, err)
			}
			if resp.StatusCode >= 200 || n > 5 {
				break
			}
		}
		b, err := io.ReadAll(resp.Body)
		if err != nil {
			return got, "", fmt.Errorf("response %d (%s) body: %w", len(got)+1, m, err)
		}
		got = append(got, gotResponse{status: resp.StatusCode, body: string(b), length: strings.Join(resp.Header.Values("Content-Length"), ",")})
	}
	rest, _ := io.ReadAll(br)
	return got, string(rest), nil
}

// TestDirectPathAdversarial sends, from a meshed client pod through both
// real proxies, what could confuse the inbound direct path (requests on
// kept application connections, written and read without http.Transport)
// or the way between it and http.Transport: pipelined requests, bodies,
// heads at the limits, and an application that closes, says close, or
// sends more than asked. It asserts what the application received, what
// the client read back, byte for byte, and which way each request went.
func TestDirectPathAdversarial(t *testing.T) {
	m := newMesh(t, proxy.Strict)
	const host = "Host: backend\r\n"
	get := func(target string) string { return "GET " + target + " HTTP/1.1\r\n" + host + "\r\n" }
	body := func(p string) string { return "path=" + p + " body=" }
	ok := func(b string) gotResponse { return gotResponse{200, b, strconv.Itoa(len(b))} }

	// A head near the inbound limit (MaxHeaderBytes, 64 KiB): many
	// headers, a long value, obs-text (UTF-8, so that the app's JSON log
	// keeps it) and tabs inside and around a value.
	var big strings.Builder
	big.WriteString("GET /d/big HTTP/1.1\r\n" + host)
	for i := range 150 {
		fmt.Fprintf(&big, "X-H-%03d: %s\r\n", i, strings.Repeat(string(rune('a'+i%26)), 100))
	}
	long := strings.Repeat("0123456789abcdef", 1024)
	big.WriteString("X-Long: " + long + "\r\n")
	big.WriteString("X-Obs: caf\xc3\xa9 \xe2\x9c\x93\r\n")
	big.WriteString("X-Tab: \ta\tb \t\r\n\r\n")
	bigHead := big.String()
	checkBig := func(t *testing.T, got []received) {
		if len(got) == 0 {
			return
		}
		h := got[0].Header
		n := 0
		for name := range h {
			if strings.HasPrefix(name, "X-H-") {
				n++
			}
		}
		if n != 150 || h.Get("X-H-149") != strings.Repeat("t", 100) {
			t.Errorf("the app got %d X-H- headers (X-H-149 %q); want 150", n, h.Get("X-H-149"))
		}
		if h.Get("X-Long") != long {
			t.Errorf("the app got X-Long of %d bytes, want %d", len(h.Get("X-Long")), len(long))
		}
		if v := h.Get("X-Obs"); v != "caf\xc3\xa9 \xe2\x9c\x93" {
			t.Errorf("the app got X-Obs %q", v)
		}
		if v := h.Get("X-Tab"); v != "a\tb" {
			t.Errorf("the app got X-Tab %q, want %q", v, "a\tb")
		}
	}

	tests := []struct {
		name string
		// send goes in one write; methods are its requests' methods, for
		// reading the responses.
		send    string
		methods []string
		want    []gotResponse
		// app is what the application received, "METHOD request-URI body".
		app []string
		// fallbacks is how many requests went through http.Transport,
		// the others going the direct way.
		fallbacks int64
		check     func(*testing.T, []received)
	}{
		{
			name:    "pipelined GETs, the first answered slowly",
			send:    get("/d/1?sleep=400ms") + get("/d/2") + get("/d/3"),
			methods: []string{"GET", "GET", "GET"},
			want:    []gotResponse{ok(body("/d/1")), ok(body("/d/2")), ok(body("/d/3"))},
			app:     []string{"GET /d/1?sleep=400ms ", "GET /d/2 ", "GET /d/3 "},
		},
		{
			name:    "HEAD then GET",
			send:    "HEAD /d/h HTTP/1.1\r\n" + host + "\r\n" + get("/d/g"),
			methods: []string{"HEAD", "GET"},
			want:    []gotResponse{{200, "", strconv.Itoa(len(body("/d/h")))}, ok(body("/d/g"))},
			app:     []string{"HEAD /d/h ", "GET /d/g "},
		},
		{
			name:    "204 and 304 then GET",
			send:    get("/d/a?status=204") + get("/d/b?status=304") + get("/d/c"),
			methods: []string{"GET", "GET", "GET"},
			want:    []gotResponse{{204, "", ""}, {304, "", ""}, ok(body("/d/c"))},
			app:     []string{"GET /d/a?status=204 ", "GET /d/b?status=304 ", "GET /d/c "},
		},
		{
			name:      "GET with a Content-Length body, then a GET",
			send:      "GET /d/b HTTP/1.1\r\n" + host + "Content-Length: 5\r\n\r\nhello" + get("/d/n"),
			methods:   []string{"GET", "GET"},
			want:      []gotResponse{ok(body("/d/b") + "hello"), ok(body("/d/n"))},
			app:       []string{"GET /d/b hello", "GET /d/n "},
			fallbacks: 1,
		},
		{
			name:      "GET with a chunked body, then a GET",
			send:      "GET /d/b HTTP/1.1\r\n" + host + "Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n" + get("/d/n"),
			methods:   []string{"GET", "GET"},
			want:      []gotResponse{ok(body("/d/b") + "hello"), ok(body("/d/n"))},
			app:       []string{"GET /d/b hello", "GET /d/n "},
			fallbacks: 1,
		},
		{
			name:      "GET whose body is a request, then a GET",
			send:      "GET /d/b HTTP/1.1\r\n" + host + "Content-Length: " + strconv.Itoa(len(get("/d/smuggled"))) + "\r\n\r\n" + get("/d/smuggled") + get("/d/n"),
			methods:   []string{"GET", "GET"},
			want:      []gotResponse{ok(body("/d/b") + get("/d/smuggled")), ok(body("/d/n"))},
			app:       []string{"GET /d/b " + get("/d/smuggled"), "GET /d/n "},
			fallbacks: 1,
		},
		{
			name:    "a head at the limits, then a GET",
			send:    bigHead + get("/d/after"),
			methods: []string{"GET", "GET"},
			want:    []gotResponse{ok(body("/d/big")), ok(body("/d/after"))},
			app:     []string{"GET /d/big ", "GET /d/after "},
			check:   checkBig,
		},
		{
			name:    "the app hangs up after a response, unannounced",
			send:    get("/d/1?then=hangup") + get("/d/2"),
			methods: []string{"GET", "GET"},
			want:    []gotResponse{ok(body("/d/1")), ok(body("/d/2"))},
			app:     []string{"GET /d/1?then=hangup ", "GET /d/2 "},
		},
		{
			name:    "the app hangs up with the next request on the connection",
			send:    get("/d/1?then=later") + get("/d/2"),
			methods: []string{"GET", "GET"},
			want:    []gotResponse{ok(body("/d/1")), ok(body("/d/2"))},
			app:     []string{"GET /d/1?then=later ", "GET /d/2 "},
		},
		{
			name:    "the app says Connection: close to the first of a pipelined pair",
			send:    get("/d/1?then=close") + get("/d/2"),
			methods: []string{"GET", "GET"},
			want:    []gotResponse{ok(body("/d/1")), ok(body("/d/2"))},
			app:     []string{"GET /d/1?then=close ", "GET /d/2 "},
		},
		{
			name:    "a response framed by the app's close, then a GET",
			send:    get("/d/1?then=eof") + get("/d/2"),
			methods: []string{"GET", "GET"},
			// Of unknown length, it reaches the client chunked.
			want: []gotResponse{{200, body("/d/1"), ""}, ok(body("/d/2"))},
			app:  []string{"GET /d/1?then=eof ", "GET /d/2 "},
		},
		{
			name:    "the app sends an unasked second response",
			send:    get("/d/1?then=extra") + get("/d/2"),
			methods: []string{"GET", "GET"},
			want:    []gotResponse{ok(body("/d/1")), ok(body("/d/2"))},
			app:     []string{"GET /d/1?then=extra ", "GET /d/2 "},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			m.resetReceived(t)
			fb := m.b.fallbacks.Load()
			segs, _ := json.Marshal([]segment{{Data: tc.send}})
			out, err := m.app(t, "raw", fmt.Sprintf("TARGET=%s:%d", ipB, httpPort), "SEGMENTS="+string(segs))
			if err != nil {
				t.Fatal(err)
			}
			got, rest, err := readResponses(out, tc.methods)
			if err != nil {
				t.Errorf("the client's bytes: %v\n%q", err, out)
			}
			if fmt.Sprint(got) != fmt.Sprint(tc.want) || rest != "" {
				t.Errorf("client read %+v, then %q; want %+v, then nothing\n%q", got, rest, tc.want, out)
			}
			recs := m.received(t)
			var app []string
			for _, r := range recs {
				app = append(app, r.Method+" "+r.RequestURI+" "+r.Body)
				if ids := r.Header.Values("X-Mesh-Peer-Identity"); len(ids) != 1 || ids[0] != clientID.String() {
					t.Errorf("the app saw identity %q for %s %s; want only %s", ids, r.Method, r.RequestURI, clientID)
				}
			}
			if strings.Join(app, "|") != strings.Join(tc.app, "|") {
				t.Errorf("the app received %q; want %q", app, tc.app)
			}
			if n := m.b.fallbacks.Load() - fb; n != tc.fallbacks {
				t.Errorf("%d requests went through http.Transport, want %d (the rest the direct way)", n, tc.fallbacks)
			}
			if tc.check != nil {
				tc.check(t, recs)
			}
		})
	}
}
