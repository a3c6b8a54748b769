package identity

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// serverMetrics are the identity service's metrics, all named here.
type serverMetrics struct {
	certify  *prometheus.CounterVec
	latency  *prometheus.HistogramVec
	refused  *prometheus.CounterVec
	reviews  prometheus.Counter
	inFlight prometheus.Gauge
}

func newServerMetrics(reg prometheus.Registerer) (*serverMetrics, error) {
	m := &serverMetrics{
		certify: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mesh_identity_certify_total",
			Help: "Certify calls by result: issued, or the gRPC code of the refusal.",
		}, []string{"result"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "mesh_identity_certify_duration_seconds",
			Help:    "Time to answer a Certify call, including the TokenReview.",
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 14),
		}, []string{"result"}),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mesh_identity_requests_refused_total",
			Help: "Certify calls refused by a limit: rate_limited_source (the source address's bucket), rate_limited_overflow (the shared bucket of addresses past the tracking cap), review_capacity (no token review slot in time), rate_limited_pod (the pod's bucket).",
		}, []string{"reason"}),
		reviews: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "mesh_identity_token_reviews_total",
			Help: "TokenReviews sent to the API server.",
		}),
		inFlight: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "mesh_identity_token_reviews_in_flight",
			Help: "Attestations (TokenReview and pod read) in progress; at most the service's MaxConcurrentReviews.",
		}),
	}
	// Every reason exists from the start, so a rate() over it is defined
	// before the first refusal.
	for _, r := range []string{refusedSource, refusedOverflow, refusedCapacity, refusedPod} {
		m.refused.WithLabelValues(r)
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{m.certify, m.latency, m.refused, m.reviews, m.inFlight} {
			if err := reg.Register(c); err != nil {
				return nil, fmt.Errorf("identity: register metrics: %w", err)
			}
		}
	}
	return m, nil
}
