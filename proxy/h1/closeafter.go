package h1

import "net/http"

// CloseAfter returns w changed so that net/http closes the connection after
// the final response written through it: the handler of a request made
// while Gate.Opaque calls it, so that bytes the client sent after a request
// whose protocol switch did not happen are never read as HTTP. A handler
// that switches protocols hijacks the connection (httputil.ReverseProxy
// does on a 101) and so is not affected, and its 101 carries no
// "Connection: close": that is why the header is set when the response
// starts rather than up front. Interim 1xx responses pass unchanged.
//
// The handler must write its response through the returned writer,
// explicitly: net/http's implicit 200 for a handler that writes nothing
// does not go through it.
func CloseAfter(w http.ResponseWriter) http.ResponseWriter { return &closeAfter{ResponseWriter: w} }

type closeAfter struct {
	http.ResponseWriter
	started bool
}

func (c *closeAfter) WriteHeader(code int) {
	if code >= 200 && !c.started {
		c.started = true
		c.Header().Set("Connection", "close")
	}
	c.ResponseWriter.WriteHeader(code)
}

func (c *closeAfter) Write(b []byte) (int, error) {
	if !c.started {
		c.WriteHeader(http.StatusOK)
	}
	return c.ResponseWriter.Write(b)
}

// Unwrap lets http.ResponseController reach Flush and Hijack.
func (c *closeAfter) Unwrap() http.ResponseWriter { return c.ResponseWriter }
