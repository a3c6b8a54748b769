package policystatus

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// The results of mesh_controller_policy_status_writes_total.
const (
	resultUpdated  = "updated"  // the status differed and was written
	resultConflict = "conflict" // the policy changed meanwhile; retried
	resultError    = "error"    // the API server refused the write; retried
)

type metrics struct {
	writes     *prometheus.CounterVec
	badReports prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		writes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mesh_controller_policy_status_writes_total",
			Help: "AuthorizationPolicy status writes by result: updated, conflict (the policy changed meanwhile; retried), error (refused; retried). An unchanged status is not written.",
		}, []string{"result"}),
		badReports: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "mesh_controller_enforcement_reports_refused_total",
			Help: "Versions of replicas' enforcement report ConfigMaps that could not be read and were ignored.",
		}),
	}
	// Every result exists from the start, so a rate() over it is defined
	// before the first write.
	for _, r := range []string{resultUpdated, resultConflict, resultError} {
		m.writes.WithLabelValues(r)
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{m.writes, m.badReports} {
			if err := reg.Register(c); err != nil {
				return nil, fmt.Errorf("policystatus: register metrics: %w", err)
			}
		}
	}
	return m, nil
}
