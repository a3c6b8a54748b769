package controlplane

import "github.com/prometheus/client_golang/prometheus"

type metrics struct {
	connected  *prometheus.GaugeVec
	pushes     *prometheus.CounterVec
	refusals   *prometheus.CounterVec
	nacks      prometheus.Counter
	ackLatency prometheus.Histogram
}

func newMetrics(reg prometheus.Registerer, stale func() float64) (*metrics, error) {
	m := &metrics{
		connected: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "mesh_controller_proxy_streams", Help: "Open control-plane streams from proxies to this replica, by stream (policy, destinations, trust_bundle).",
		}, []string{"stream"}),
		pushes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mesh_controller_pushes_total", Help: "Messages pushed to proxies, by kind (policy, destinations, trust_bundle).",
		}, []string{"kind"}),
		refusals: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mesh_controller_stream_refusals_total", Help: "Control-plane requests refused, by reason (no_svid, not_own_pod, no_pod, starting, ...).",
		}, []string{"reason"}),
		nacks: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "mesh_controller_policy_nacks_total", Help: "Policies a proxy reported it could not enforce.",
		}),
		ackLatency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "mesh_controller_policy_push_ack_seconds", Help: "From a change seen by this replica to the proxy's acknowledgement of the policy it produced.",
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 16),
		}),
	}
	if reg == nil {
		return m, nil
	}
	staleGauge := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "mesh_controller_proxies_stale", Help: "Policy streams whose proxy has not acknowledged the last policy sent within the stale bound.",
	}, stale)
	for _, c := range []prometheus.Collector{m.connected, m.pushes, m.refusals, m.nacks, m.ackLatency, staleGauge} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}
