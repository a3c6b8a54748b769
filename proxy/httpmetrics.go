package proxy

import (
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"time"
)

// Headers mesh's proxies exchange. An application can neither send them
// through a proxy nor have them reach another: each proxy removes them
// from what it forwards.
const (
	// ProxyErrorHeader names, on a response the proxy made itself, why:
	// "no_endpoints: ...", "connect_failed: ...", "timeout: ...".
	ProxyErrorHeader = "Mesh-Proxy-Error"
	// OrigProtoHeader, on a request between proxies over ALPNH2, says the
	// application sent it as HTTP/1.1, so the server side sends it on as
	// HTTP/1.1 and not HTTP/2.
	OrigProtoHeader = "Mesh-Orig-Proto"
	// notDeliveredHeader, on a response between proxies over ALPNH2, says
	// the server side could not reach its application: the request was
	// not processed, and the client side may send it to another endpoint
	// whatever its method.
	notDeliveredHeader = "Mesh-Not-Delivered"
)

// meshHeaders are removed from requests and responses crossing a proxy.
var meshHeaders = []string{ProxyErrorHeader, OrigProtoHeader, notDeliveredHeader}

// httpLabels are one request's metric labels.
type httpLabels struct {
	direction, service, peer, method, route string
}

// observeHTTP counts one finished request. status is zero when no response
// was written; proxyErr is the proxy's own error reason, empty when the
// response came from upstream.
func (p *Proxy) observeHTTP(l *httpLabels, w *statusWriter, r *http.Request, start time.Time) {
	p.m.httpRequests.WithLabelValues(l.direction, l.service, l.peer, l.method, l.route,
		statusClass(w.status), grpcStatus(w, r), w.proxyErr).Inc()
	p.m.httpLatency.WithLabelValues(l.direction, l.service, l.peer, l.route).Observe(time.Since(start).Seconds())
}

// grpcStatus is a gRPC response's status code, from its trailers or, for
// a trailers-only response, its headers: "" for a request that is not
// gRPC, "unknown" for a gRPC response without a valid one.
func grpcStatus(w *statusWriter, r *http.Request) string {
	if !isGRPC(r) {
		return ""
	}
	h := w.Header()
	v := h.Get("Grpc-Status")
	if v == "" {
		v = h.Get(http.TrailerPrefix + "Grpc-Status")
	}
	if n, err := strconv.Atoi(v); err == nil && n >= 0 && n <= 16 {
		return v
	}
	return "unknown"
}

// gRPC status codes the proxy answers with.
const (
	grpcDeadlineExceeded = 4
	grpcPermissionDenied = 7
	grpcUnavailable      = 14
)

// proxyError answers a request the proxy could not pass on: status with
// ProxyErrorHeader naming reason, or for gRPC the status code grpcCode in a
// trailers-only response, as gRPC clients expect.
func proxyError(w *statusWriter, r *http.Request, status, grpcCode int, reason, detail string) {
	w.proxyErr = reason
	msg := reason
	if detail != "" {
		msg += ": " + detail
	}
	h := w.Header()
	h.Set(ProxyErrorHeader, msg)
	if isGRPC(r) {
		h.Set("Content-Type", "application/grpc")
		h.Set("Grpc-Status", strconv.Itoa(grpcCode))
		h.Set("Grpc-Message", url.PathEscape("mesh: "+msg))
		w.WriteHeader(http.StatusOK)
		return
	}
	h.Set("Content-Type", "text/plain; charset=utf-8")
	h.Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	fmt.Fprintf(w, "mesh: %s\n", msg)
}
