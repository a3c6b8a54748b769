package trustbundle

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// The results of mesh_controller_trust_bundle_writes_total.
const (
	resultCreated  = "created"  // the namespace had no ConfigMap
	resultUpdated  = "updated"  // it differed from the bundle
	resultReplaced = "replaced" // it was immutable and differed: deleted and created again
	resultConflict = "conflict" // the cache was behind the API server; retried
	resultError    = "error"    // the API server refused the write; retried
	resultBad      = "bad_bundle"
)

type metrics struct {
	writes *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		writes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mesh_controller_trust_bundle_writes_total",
			Help: "Writes of mesh-trust-bundle ConfigMaps by result: created, updated, replaced (an immutable one deleted and created again), conflict (the cache was behind; retried), error (refused; retried), bad_bundle (the bundle was empty or held a certificate without DER, so nothing was written).",
		}, []string{"result"}),
	}
	// Every result exists from the start, so a rate() over it is defined
	// before the first write.
	for _, r := range []string{resultCreated, resultUpdated, resultReplaced, resultConflict, resultError, resultBad} {
		m.writes.WithLabelValues(r)
	}
	if reg != nil {
		if err := reg.Register(m.writes); err != nil {
			return nil, fmt.Errorf("trustbundle: register metrics: %w", err)
		}
	}
	return m, nil
}
