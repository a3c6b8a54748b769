package proxy

import (
	"net/http"
	"sync/atomic"
)

// CountFallback counts, in the counter it returns, the inbound HTTP/1.1
// requests of p that do not go the direct way (direct.go) but through
// http.Transport: with what the application received, the tests tell
// which way each request went. Call it before p.Run.
func CountFallback(p *Proxy) *atomic.Int64 {
	n := new(atomic.Int64)
	d := p.transports.direct
	d.fallback = countingRT{rt: d.fallback, n: n}
	return n
}

type countingRT struct {
	rt http.RoundTripper
	n  *atomic.Int64
}

func (c countingRT) RoundTrip(r *http.Request) (*http.Response, error) {
	c.n.Add(1)
	return c.rt.RoundTrip(r)
}

// CloseIdleConnections passes on to the wrapped transport, as
// directTransport.CloseIdleConnections expects of its fallback.
func (c countingRT) CloseIdleConnections() {
	if ci, ok := c.rt.(interface{ CloseIdleConnections() }); ok {
		ci.CloseIdleConnections()
	}
}
