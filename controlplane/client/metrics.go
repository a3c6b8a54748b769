package client

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// Watch kinds, the kind label of every metric and log line.
const (
	kindPolicy       = "policy"
	kindDestinations = "destinations"
	kindBundle       = "bundle"
)

// Reasons a part of a controller message is rejected (the reason label of
// mesh_proxy_control_rejected_total).
const (
	reasonBadAddress   = "bad_address"    // a destination or endpoint address that does not parse
	reasonBadIdentity  = "bad_identity"   // a meshed pod or endpoint without an acceptable identity
	reasonBadKind      = "bad_kind"       // a destination whose kind and address disagree
	reasonBadProtocol  = "bad_protocol"   // a Service port protocol the proxy does not know
	reasonEmptyBundle  = "empty_bundle"   // a trust bundle with no root
	reasonBadRoot      = "bad_root"       // a root that does not parse or is not a CA
	reasonTooManyRoots = "too_many_roots" // a trust bundle beyond maxRoots
	reasonRefused      = "refused"        // the Bundle callback returned an error
)

// metrics are the client's Prometheus metrics; every name is prefixed
// mesh_proxy_control_.
type metrics struct {
	connected  *prometheus.GaugeVec
	messages   *prometheus.CounterVec
	reconnects *prometheus.CounterVec
	nacks      prometheus.Counter
	rejected   *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		connected: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "mesh_proxy_control_stream_connected", Help: "1 while a control-plane stream of this kind is open and has delivered its first message, else 0.",
		}, []string{"kind"}),
		messages: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mesh_proxy_control_messages_total", Help: "Messages received from the controller, by stream kind.",
		}, []string{"kind"}),
		reconnects: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mesh_proxy_control_reconnects_total", Help: "Control-plane streams that ended (or could not start) and are retried after back-off, by kind.",
		}, []string{"kind"}),
		nacks: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "mesh_proxy_control_policy_nacks_total", Help: "Policies the proxy could not enforce and reported back to the controller (NACK); it keeps the previous one.",
		}),
		rejected: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mesh_proxy_control_rejected_total", Help: "Parts of controller messages refused, by stream kind and reason (a destination entry, an endpoint, a whole trust bundle); the previous state is kept.",
		}, []string{"kind", "reason"}),
	}
	// Every kind starts at 0 so dashboards see a stream that never
	// connected, not a missing series.
	for _, k := range []string{kindPolicy, kindDestinations, kindBundle} {
		m.connected.WithLabelValues(k)
		m.messages.WithLabelValues(k)
		m.reconnects.WithLabelValues(k)
	}
	if reg == nil {
		return m, nil
	}
	for _, c := range []prometheus.Collector{m.connected, m.messages, m.reconnects, m.nacks, m.rejected} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("client: register metrics: %w", err)
		}
	}
	return m, nil
}
