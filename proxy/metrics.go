package proxy

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the proxy's Prometheus metrics; every name is prefixed
// mesh_proxy_.
type metrics struct {
	opened     *prometheus.CounterVec
	closed     *prometheus.CounterVec
	open       *prometheus.GaugeVec
	bytes      *prometheus.CounterVec
	handshakes *prometheus.CounterVec
	hsErrors   *prometheus.CounterVec
	refused    *prometheus.CounterVec
	decisions  *prometheus.CounterVec
	svidExpiry prometheus.Gauge
	renewals   prometheus.Counter

	httpRequests *prometheus.CounterVec
	httpLatency  *prometheus.HistogramVec
	retries      *prometheus.CounterVec

	acceptErrors *prometheus.CounterVec
	limitReached *prometheus.CounterVec
	idleClosed   prometheus.Counter
	revoked      *prometheus.CounterVec
	badRequests  *prometheus.CounterVec
	headersDrop  prometheus.Counter

	// openOut is open's outbound child, bound once: the outbound side
	// counts every application connection with it.
	openOut prometheus.Gauge
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		opened: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mesh_proxy_connections_opened_total", Help: "Connections opened, by direction, peer identity and TLS status.",
		}, []string{"direction", "peer", "tls"}),
		closed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mesh_proxy_connections_closed_total", Help: "Connections closed, by direction, peer identity and TLS status.",
		}, []string{"direction", "peer", "tls"}),
		open: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "mesh_proxy_connections_open", Help: "Connections open now, by direction.",
		}, []string{"direction"}),
		bytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mesh_proxy_bytes_total", Help: "Bytes proxied on opaque TCP connections, by direction, peer identity and flow (to_app: towards the local application; from_app: from it).",
		}, []string{"direction", "peer", "flow"}),
		handshakes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mesh_proxy_tls_handshakes_total", Help: "Completed mTLS handshakes, by direction, TLS version and whether the session was resumed.",
		}, []string{"direction", "version", "resumed"}),
		hsErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mesh_proxy_tls_handshake_errors_total", Help: "Failed mTLS handshakes, by direction and reason.",
		}, []string{"direction", "reason"}),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mesh_proxy_connections_refused_total", Help: "Connections refused before reaching their destination, by direction and reason.",
		}, []string{"direction", "reason"}),
		decisions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mesh_proxy_authz_decisions_total", Help: "Authorization decisions, by decision, deciding policy and direction.",
		}, []string{"decision", "policy", "direction"}),
		svidExpiry: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "mesh_proxy_svid_expiry_timestamp_seconds", Help: "When the proxy's current SVID expires, Unix seconds.",
		}),
		renewals: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "mesh_proxy_svid_renewals_total", Help: "Times the proxy's SVID changed (renewal or rotation).",
		}),
		httpRequests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mesh_proxy_http_requests_total",
			Help: "HTTP requests, counted when their response ends, by direction, destination Service (outbound), peer identity (outbound: the endpoint's; inbound: the caller's), method, route template, response status class, gRPC status, and the proxy's own error (empty when the response came from the application).",
		}, []string{"direction", "service", "peer", "method", "route", "status_class", "grpc_status", "error"}),
		httpLatency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "mesh_proxy_http_request_duration_seconds", Help: "Time from an HTTP request's headers to the end of its response, by direction, destination Service, peer identity and route template.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16),
		}, []string{"direction", "service", "peer", "route"}),
		retries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mesh_proxy_http_retries_total",
			Help: "Outbound requests sent again to another endpoint because the first never reached an application, by destination Service and reason (connect_failed, not_delivered).",
		}, []string{"service", "reason"}),
		acceptErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mesh_proxy_accept_errors_total", Help: "Errors accepting connections (such as running out of file descriptors), by listener; the proxy backs off and keeps serving.",
		}, []string{"listener"}),
		limitReached: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mesh_proxy_connections_limit_reached_total", Help: "Connections closed at once because the proxy already served its maximum, by listener.",
		}, []string{"listener"}),
		revoked: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mesh_proxy_connections_revoked_total",
			Help: "Open mTLS connections closed because the mesh no longer has a pod of the peer's identity at the peer's address (pod deleted, address reused).",
		}, []string{"direction"}),
		idleClosed: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "mesh_proxy_idle_timeouts_total", Help: "Opaque TCP connections and upgraded HTTP streams closed after the idle timeout.",
		}),
		badRequests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mesh_proxy_http_bad_requests_total", Help: "HTTP requests refused because they were malformed or ambiguous (outbound: framing only; inbound: before authorization), by direction and reason.",
		}, []string{"direction", "reason"}),
		headersDrop: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "mesh_proxy_http_headers_removed_total", Help: "Request headers the proxy removed: variants of its own identity header, and, with headers-with-underscores=drop, names with underscores.",
		}),
	}
	m.openOut = m.open.WithLabelValues("outbound")
	if reg != nil {
		for _, c := range []prometheus.Collector{m.opened, m.closed, m.open, m.bytes, m.handshakes, m.hsErrors, m.refused, m.decisions, m.svidExpiry, m.renewals, m.httpRequests, m.httpLatency, m.retries, m.acceptErrors, m.limitReached, m.idleClosed, m.revoked, m.badRequests, m.headersDrop} {
			if err := reg.Register(c); err != nil {
				return nil, fmt.Errorf("proxy: register metrics: %w", err)
			}
		}
	}
	return m, nil
}
