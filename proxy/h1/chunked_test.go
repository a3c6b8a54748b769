package h1

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/http/httputil"
	"net/textproto"
	"testing"
)

// scanChunked runs a chunkScanner over body the way the gate does, the
// bytes arriving in two parts split at cut. It returns the decoded data, the
// length of the body when it ended, and the error that stopped it
// (ErrMore when body ran out first).
func scanChunked(body []byte, cut, bound int) (data []byte, n int, err error) {
	var c chunkScanner
	c.reset(bound)
	avail := min(cut, len(body))
	pos := 0
	for steps := 0; steps <= len(body)+1; steps++ {
		frame, d, done, err := c.step(body[pos:avail])
		if errors.Is(err, ErrMore) && avail < len(body) {
			avail = len(body)
			continue
		}
		if err != nil {
			return data, pos, err
		}
		if frame <= 0 {
			return data, pos, fmt.Errorf("step made no progress at %d", pos)
		}
		for i := pos; i < pos+frame; i++ {
			if body[i] == '\n' && (i == 0 || body[i-1] != '\r') {
				return data, pos, fmt.Errorf("accepted a bare LF at %d", i)
			}
		}
		pos += frame
		if done {
			return data, pos, nil
		}
		if d > int64(len(body)-pos) {
			return data, pos, ErrMore
		}
		data = append(data, body[pos:pos+int(d)]...)
		pos += int(d)
		avail = max(avail, pos)
	}
	return data, pos, errors.New("too many steps")
}

func TestChunkScanner(t *testing.T) {
	tests := []struct {
		in   string
		data string
		n    int // body length when accepted
		err  string
	}{
		{in: "0\r\n\r\nNEXT", n: 5},
		{in: "3\r\nabc\r\n0\r\n\r\n", data: "abc", n: 13},
		{in: "A\r\n0123456789\r\n0\r\n\r\n", data: "0123456789", n: 20},
		{in: "a;x\r\n0123456789\r\n0;y=\"\\\"\"\r\nT: 1\r\nU:2\r\n\r\nN", data: "0123456789", n: 40},
		{in: "ffffffffffffffff\r\n", err: "h1: chunked body: chunk size overflows"},
		{in: "7fffffffffffffff\r\nabc", err: ErrMore.Error()},
		{in: "3\r\nabc", err: ErrMore.Error()},
		{in: "3\r\nabc\r", err: ErrMore.Error()},
		{in: "3\r\nabc\n", err: "h1: chunked body: chunk data not followed by CRLF"},
		{in: "3\r\nabcd\r\n", err: "h1: chunked body: chunk data not followed by CRLF"},
		{in: "3\nabc\r\n", err: "h1: chunked body: bare LF in chunk-size line"},
		{in: "3\r\r\nabc\r\n", err: "h1: chunked body: bare CR in chunk-size line"},
		{in: "\r\n", err: "h1: chunked body: chunk size is not a hex number"},
		{in: "0x3\r\n", err: "h1: chunked body: invalid character 'x' after chunk size"},
		{in: "3 \r\n", err: "h1: chunked body: invalid character 0x20 after chunk size"},
		{in: "3; a=b\r\n", err: "h1: chunked body: empty chunk extension name"},
		{in: "3;a =b\r\n", err: "h1: chunked body: invalid character 0x20 after chunk size"},
		{in: "3;a=\r\n", err: "h1: chunked body: empty chunk extension value"},
		{in: "3;a=\"b\r\n", err: "h1: chunked body: malformed quoted chunk extension value"},
		{in: "3;a=\"\x01\"\r\n", err: "h1: chunked body: malformed quoted chunk extension value"},
		{in: "1" + string(bytes.Repeat([]byte(";a"), 600)) + "\r\n", err: "h1: chunked body: chunk-size line longer than 1024 bytes"},
		{in: "0\r\nT: 1\n\r\n", err: "h1: chunked body: trailer line 2: bare LF"},
		{in: "0\r\nT : 1\r\n\r\n", err: "h1: chunked body: trailer line 2: whitespace before the colon"},
		{in: "0\r\nTransfer-Encoding: chunked\r\n\r\n", err: "h1: chunked body: trailer line 2: Transfer-Encoding in a trailer"},
		{in: "0\r\nhost: a\r\n\r\n", err: "h1: chunked body: trailer line 2: host in a trailer"},
		{in: "0\r\nT: 1\r\n", err: ErrMore.Error()},
	}
	for _, tt := range tests {
		for cut := range len(tt.in) + 1 {
			data, n, err := scanChunked([]byte(tt.in), cut, 4096)
			if tt.err != "" {
				if err == nil || err.Error() != tt.err {
					t.Errorf("%q cut at %d: %v, want %s", tt.in, cut, err, tt.err)
				}
				continue
			}
			if err != nil || string(data) != tt.data || n != tt.n {
				t.Errorf("%q cut at %d: %q, %d, %v; want %q, %d", tt.in, cut, data, n, err, tt.data, tt.n)
			}
		}
	}
}

func FuzzChunked(f *testing.F) {
	for _, s := range []string{
		"0\r\n\r\n",
		"5\r\nhello\r\n0\r\n\r\n",
		"5;a=b;c=\"d;e\"\r\nhello\r\n6\r\n world\r\n0\r\nX: 1\r\nY:\t2 \r\n\r\nGET / HTTP/1.1\r\n",
		"5\nhello\r\n0\r\n\r\n",
		"5\r\nhello\n0\r\n\r\n",
		"0\r\nX: 1\n\n",
		"00000000000000001\r\na\r\n0\r\n\r\n",
		"0\r\nContent-Length: 5\r\n\r\n",
		"5 \r\nhello\r\n0\r\n\r\n",
	} {
		f.Add([]byte(s), uint16(3))
	}
	f.Fuzz(func(t *testing.T, body []byte, cut uint16) {
		data, n, err := scanChunked(body, int(cut), 4096)
		whole, wn, werr := scanChunked(body, len(body), 4096)
		if fmt.Sprint(err) != fmt.Sprint(werr) || n != wn || !bytes.Equal(data, whole) {
			t.Fatalf("split at %d: %q, %d, %v; whole: %q, %d, %v", cut, data, n, err, whole, wn, werr)
		}
		if err != nil {
			var se *SyntaxError
			if !errors.Is(err, ErrMore) && !errors.As(err, &se) {
				t.Fatalf("error %T: %v", err, err)
			}
			return
		}
		// net/http's chunked reader and trailer parser, where they accept
		// the body, must decode the same data and end at the same byte.
		br := bufio.NewReader(bytes.NewReader(body[:n]))
		got, err := io.ReadAll(httputil.NewChunkedReader(br))
		if err != nil {
			return // net/http is stricter here (e.g. its chunk-extension overhead limit): safe
		}
		if !bytes.Equal(got, data) {
			t.Fatalf("net/http decoded %q, we %q", got, data)
		}
		if _, err := textproto.NewReader(br).ReadMIMEHeader(); err != nil {
			t.Fatalf("net/http's trailer parser: %v", err)
		}
		if rest, _ := io.ReadAll(br); len(rest) != 0 {
			t.Fatalf("net/http left %q of the body unread", rest)
		}
	})
}
