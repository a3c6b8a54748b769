package h1_test

import (
	"net"
	"net/http"

	"github.com/mesh-dev/mesh/proxy/h1"
)

// The wiring for one accepted connection served by its own http.Server,
// as the sidecar's inbound side does: the handler answers the gate's
// synthetic request with 400, and closes the connection after a request
// whose protocol switch may not happen.
func ExampleNewGate() {
	var conn net.Conn                           // the accepted (decrypted) client connection
	var app http.Handler                        // authorization, then the reverse proxy
	var listenerFor func(net.Conn) net.Listener // yields conn once

	g := h1.NewGate(conn, h1.Config{})
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if reason, ok := g.Rejected(r); ok {
			http.Error(w, "mesh: bad request: "+reason, http.StatusBadRequest)
			return
		}
		if g.Opaque() {
			w = h1.CloseAfter(w)
		}
		app.ServeHTTP(w, r)
	})}
	_ = srv.Serve(listenerFor(g))
}
