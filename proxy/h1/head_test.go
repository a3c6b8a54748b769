package h1_test

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"net/http"
	"net/textproto"
	"slices"
	"strings"
	"testing"

	"github.com/mesh-dev/mesh/proxy/h1"
)

// fields lists a head's fields as "name=value".
func fields(h *h1.Head) []string {
	var out []string
	for n, v := range h.Fields() {
		out = append(out, string(n)+"="+string(v))
	}
	return out
}

func TestParseHead(t *testing.T) {
	tests := []struct {
		in      string
		max     int
		method  string
		target  string
		minor   int
		cl      int64
		chunked bool
		opaque  bool
		fields  []string
		err     string // the full error text
	}{
		{in: "GET / HTTP/1.1\r\nHost: x\r\n\r\nrest", method: "GET", target: "/", minor: 1, cl: -1, fields: []string{"Host=x"}},
		{in: "OPTIONS * HTTP/1.0\r\n\r\n", method: "OPTIONS", target: "*", minor: 0, cl: -1},
		{in: "POST http://a/b?c HTTP/1.1\r\nhost:x\r\nCONTENT-LENGTH:\t42\t\r\nX-Empty:\r\n\r\n", method: "POST", target: "http://a/b?c", minor: 1, cl: 42, fields: []string{"host=x", "CONTENT-LENGTH=42", "X-Empty="}},
		{in: "PUT /u HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: Chunked\r\n\r\n", method: "PUT", target: "/u", minor: 1, cl: -1, chunked: true, fields: []string{"Host=x", "Transfer-Encoding=Chunked"}},
		{in: "CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n", method: "CONNECT", target: "a:443", minor: 1, cl: -1, opaque: true, fields: []string{"Host=a:443"}},
		{in: "GET /ws HTTP/1.1\r\nHost: x\r\nupgrade: websocket\r\n\r\n", method: "GET", target: "/ws", minor: 1, cl: -1, opaque: true, fields: []string{"Host=x", "upgrade=websocket"}},
		{in: "connect a:443 HTTP/1.1\r\nHost: a\r\n\r\n", method: "connect", target: "a:443", minor: 1, cl: -1, fields: []string{"Host=a"}}, // net/http does not tunnel "connect"
		{in: "!#$%&'*+-.^_`|~09azAZ /~!\"$&'()*+,;=:@[]{}<>|\\^` HTTP/1.1\r\nHost: x\r\n\r\n", method: "!#$%&'*+-.^_`|~09azAZ", target: "/~!\"$&'()*+,;=:@[]{}<>|\\^`", minor: 1, cl: -1, fields: []string{"Host=x"}},

		{in: "", err: "h1: need more bytes"},
		{in: "GET / HTTP/1.1\r\nHost: x\r\n\r", err: "h1: need more bytes"},
		{in: "GET / HTTP/1.1\r\nHost: x\r\n", err: "h1: need more bytes"},
		{in: "GET / HTTP/1.1\r\nHost: x\r\n\n", err: "h1: line 3: bare LF"},
		{in: "GET / HTTP/1.1\n", err: "h1: line 1: bare LF"},
		{in: "\n", err: "h1: line 1: bare LF"},
		{in: "GET / HTTP/1.1\r\r\n", err: "h1: line 1: bare CR"},
		{in: "GET / HTTP/1.1\r\nHost: x\r\nA:\rb\r\n\r\n", err: "h1: line 3: bare CR"},
		{in: " GET / HTTP/1.1\r\n", err: "h1: line 1: request line starts with a space"},
		{in: "GET\r\n", err: "h1: line 1: request line without spaces"},
		{in: "GET /\r\n", err: "h1: line 1: request line without a version"},
		{in: "GET / HTTP/1.1 \r\n", err: `h1: line 1: unsupported version "HTTP/1.1 "`},
		{in: "GET / http/1.1\r\n", err: `h1: line 1: unsupported version "http/1.1"`},
		{in: "GET / HTTP/1.1\r\nHost: x\r\n\x00: y\r\n\r\n", err: "h1: line 3: invalid character 0x00 in field name"},
		{in: "GET / HTTP/1.1\r\nHost: x\r\nA\tB: y\r\n\r\n", err: "h1: line 3: whitespace before the colon"},
		{in: "GET / HTTP/1.1\r\nHost: x\r\n: y\r\n\r\n", err: "h1: line 3: empty field name"},
		{in: "GET / HTTP/1.1\r\nHost: x\r\nX: \xff\x01\r\n\r\n", err: "h1: line 3: control character 0x01 in field value"},
		{in: "GET / HTTP/1.1\r\nHost: x\r\n\tX: y\r\n\r\n", err: "h1: line 3: obs-fold (line starts with whitespace)"},
		{in: "GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\ncontent-length: 1\r\n\r\n", err: "h1: line 4: two Content-Length headers"},
		{in: "GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999\r\n\r\n", err: "h1: line 3: Content-Length overflows"},
		{in: "GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 9223372036854775807\r\n\r\n", method: "GET", target: "/", minor: 1, cl: 1<<63 - 1, fields: []string{"Host=x", "Content-Length=9223372036854775807"}},
		{in: "GET / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", err: `h1: line 3: Transfer-Encoding "gzip, chunked" is not exactly chunked`},
		{in: "GET / HTTP/1.1\r\nHost: x\r\nContent-Length: \xc3\xa9\r\n\r\n", err: `h1: line 3: Content-Length "\u00e9" is not a decimal number`},
		// Unicode case folding (bytes.EqualFold) would read these as the
		// framing fields; HTTP compares names and "chunked" in ASCII only.
		{in: "GET / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chun\u212aed\r\n\r\n", err: `h1: line 3: Transfer-Encoding "chun\u212aed" is not exactly chunked`},
		{in: "GET / HTTP/1.1\r\nHost: x\r\nTran\u017ffer-Encoding: chunked\r\n\r\n", err: "h1: line 3: invalid character 0xc5 in field name"},
		{in: "GET / HTTP/1.1\r\nHost: x\r\nContent-Length: \uff15\r\n\r\n", err: `h1: line 3: Content-Length "\uff15" is not a decimal number`},
		{in: "GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 0\r\n\r\n", err: "h1: both Content-Length and Transfer-Encoding"},
		{in: "GET / HTTP/1.1\r\nX: y\r\n\r\n", err: "h1: HTTP/1.1 request without Host"},
		{in: "GET / HTTP/1.1\r\nHost: x\r\n\r\n", max: 26, err: "h1: head longer than 26 bytes"},
		{in: "GET / HTTP/1.1\r\nHost: x\r\n\r\n", max: 27, method: "GET", target: "/", minor: 1, cl: -1, fields: []string{"Host=x"}},
		{in: "GET / HTTP/1.1\r\nHost: x\r\n\r", max: 26, err: "h1: head longer than 26 bytes"},
		{in: "GET / HTTP/1.1\r\nHost: x\r\n\r", max: 27, err: "h1: need more bytes"},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("%.40q", tt.in), func(t *testing.T) {
			h, err := h1.ParseHead([]byte(tt.in), tt.max)
			if tt.err != "" {
				if err == nil || err.Error() != tt.err {
					t.Fatalf("err %v, want %s", err, tt.err)
				}
				var se *h1.SyntaxError
				if !errors.Is(err, h1.ErrMore) && !errors.As(err, &se) {
					t.Errorf("err %T, want *SyntaxError", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if string(h.Method) != tt.method || string(h.Target) != tt.target || h.Minor != tt.minor ||
				h.ContentLength != tt.cl || h.Chunked != tt.chunked || h.Opaque() != tt.opaque {
				t.Errorf("got %q %q 1.%d cl=%d chunked=%v opaque=%v", h.Method, h.Target, h.Minor, h.ContentLength, h.Chunked, h.Opaque())
			}
			if got := fields(&h); !slices.Equal(got, tt.fields) {
				t.Errorf("fields %q, want %q", got, tt.fields)
			}
			if want := strings.Index(tt.in, "\r\n\r\n") + 4; h.Len != want {
				t.Errorf("Len %d, want %d", h.Len, want)
			}
		})
	}
}

// A Parser fed a byte at a time reaches the same head as one call, says
// ErrMore until then, and finds a violation at the same place.
func TestParserIncremental(t *testing.T) {
	for _, in := range []string{
		"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nX: " + strings.Repeat("v", 300) + "\r\n\r\nabc",
		"GET / HTTP/1.1\r\nHost: x\r\nX: 1\nY: 2\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: x\r\n" + strings.Repeat("X: 1\r\n", 100),
	} {
		want, wantErr := h1.ParseHead([]byte(in), 0)
		p := h1.Parser{}
		var got h1.Head
		var err error
		for n := 0; n <= len(in); n++ {
			got, err = p.Parse([]byte(in[:n]))
			if !errors.Is(err, h1.ErrMore) {
				break
			}
		}
		if fmt.Sprint(err) != fmt.Sprint(wantErr) {
			t.Errorf("%.30q: incremental err %v, one call %v", in, err, wantErr)
		}
		if err == nil && (got.Len != want.Len || !slices.Equal(fields(&got), fields(&want)) || got.ContentLength != want.ContentLength) {
			t.Errorf("%.30q: incremental %+v, one call %+v", in, got, want)
		}
	}
	var p h1.Parser
	if _, err := p.Parse([]byte("GET / HT")); !errors.Is(err, h1.ErrMore) {
		t.Fatal(err)
	}
	if _, err := p.Parse([]byte("GET")); err == nil || errors.Is(err, h1.ErrMore) {
		t.Errorf("shorter input after a longer one: %v, want an error", err)
	}
}

// serialise writes h back out in the plainest form the grammar allows.
func serialise(h *h1.Head) []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, "%s %s HTTP/1.%d\r\n", h.Method, h.Target, h.Minor)
	for n, v := range h.Fields() {
		fmt.Fprintf(&b, "%s: %s\r\n", n, v)
	}
	b.WriteString("\r\n")
	return b.Bytes()
}

func FuzzParseHead(f *testing.F) {
	for _, s := range []string{
		"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
		"GET /healthz HTTP/1.1\r\nHost: x\r\nX: 1\n\nDELETE /admin HTTP/1.1\r\nHost: x\r\n\r\n",
		"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
		"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, identity\r\n\r\n",
		"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5, 5\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: x\r\nX: a\r\n b\r\n\r\n",
		"GET / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
		"GET / HTTP/1.1\r\nHost : x\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: x\r\nX: \x00\r\n\r\n",
		"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
		"CONNECT a:1 HTTP/1.1\r\nHost: a:1\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
		"\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 007\r\n\r\n",
	} {
		f.Add([]byte(s), uint16(0))
	}
	f.Fuzz(func(t *testing.T, b []byte, split uint16) {
		const max = 4096
		h, err := h1.ParseHead(b, max)
		// Incremental parsing agrees with one call.
		p := h1.Parser{Max: max}
		cut := int(split) % (len(b) + 1)
		if hp, perr := p.Parse(b[:cut]); errors.Is(perr, h1.ErrMore) {
			if h2, err2 := p.Parse(b); fmt.Sprint(err2) != fmt.Sprint(err) || h2.Len != h.Len {
				t.Fatalf("in two steps: %d, %v; in one: %d, %v", h2.Len, err2, h.Len, err)
			}
		} else if fmt.Sprint(perr) != fmt.Sprint(err) || hp.Len != h.Len {
			t.Fatalf("prefix of %d bytes: %d, %v; whole: %d, %v", cut, hp.Len, perr, h.Len, err)
		}
		if err != nil {
			var se *h1.SyntaxError
			if !errors.Is(err, h1.ErrMore) && !errors.As(err, &se) {
				t.Fatalf("error %T %v", err, err)
			}
			return
		}
		head := b[:h.Len]
		if h.Len > max || !bytes.HasSuffix(head, []byte("\r\n\r\n")) {
			t.Fatalf("accepted %q of length %d", head, h.Len)
		}
		for i, c := range head {
			if c == '\n' && (i == 0 || head[i-1] != '\r') {
				t.Fatalf("accepted a bare LF at %d: %q", i, head)
			}
			if c == '\r' && (i+1 == len(head) || head[i+1] != '\n') {
				t.Fatalf("accepted a bare CR at %d: %q", i, head)
			}
		}
		// Anything accepted re-serialises to a head accepted the same.
		again := serialise(&h)
		h2, err := h1.ParseHead(again, 2*max)
		if err != nil {
			t.Fatalf("re-serialised %q: %v", again, err)
		}
		if !bytes.Equal(h2.Method, h.Method) || !bytes.Equal(h2.Target, h.Target) || h2.Minor != h.Minor ||
			h2.ContentLength != h.ContentLength || h2.Chunked != h.Chunked || h2.Upgrade != h.Upgrade ||
			!slices.Equal(fields(&h2), fields(&h)) {
			t.Fatalf("re-serialised %q parses as %+v, was %+v", again, h2, h)
		}
		// Where net/http also accepts it, it reads the same framing and
		// ends the head at the same byte.
		br := bufio.NewReader(bytes.NewReader(append(slices.Clip(head), "TAIL"...)))
		req, err := http.ReadRequest(br)
		if err != nil {
			return
		}
		if req.Method != string(h.Method) || req.RequestURI != string(h.Target) || req.ProtoMinor != h.Minor {
			t.Fatalf("net/http read %s %s 1.%d, we read %s %s 1.%d", req.Method, req.RequestURI, req.ProtoMinor, h.Method, h.Target, h.Minor)
		}
		switch {
		case h.Chunked:
			if !slices.Equal(req.TransferEncoding, []string{"chunked"}) {
				t.Fatalf("net/http framing %v/%d, we read chunked", req.TransferEncoding, req.ContentLength)
			}
		case h.ContentLength >= 0:
			if req.ContentLength != h.ContentLength || req.TransferEncoding != nil {
				t.Fatalf("net/http framing %v/%d, we read Content-Length %d", req.TransferEncoding, req.ContentLength, h.ContentLength)
			}
		default:
			if req.ContentLength != 0 || req.TransferEncoding != nil {
				t.Fatalf("net/http framing %v/%d, we read no body", req.TransferEncoding, req.ContentLength)
			}
			if rest := br.Buffered(); rest != len("TAIL") {
				t.Fatalf("net/http left %d bytes after the head, want 4", rest)
			}
		}
		want := http.Header{}
		for n, v := range h.Fields() {
			if k := textproto.CanonicalMIMEHeaderKey(string(n)); k != "Host" {
				want[k] = append(want[k], string(v))
			}
		}
		delete(req.Header, "Transfer-Encoding") // net/http moves it to req.TransferEncoding
		delete(want, "Transfer-Encoding")
		if fmt.Sprint(req.Header) != fmt.Sprint(want) {
			t.Fatalf("net/http headers %v, ours %v", req.Header, want)
		}
	})
}
