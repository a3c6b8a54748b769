package audit

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// Metric names, in one place.
const (
	MetricRecords            = "mesh_proxy_audit_records_total"
	MetricDropped            = "mesh_proxy_audit_dropped_total"
	MetricCheckpoints        = "mesh_proxy_audit_checkpoints_total"
	MetricCheckpointFailures = "mesh_proxy_audit_checkpoint_failures_total"
)

type metrics struct {
	written, dropped, checkpoints, failures prometheus.Counter
}

func newMetrics() metrics {
	return metrics{
		written:     prometheus.NewCounter(prometheus.CounterOpts{Name: MetricRecords, Help: "Audit records written (checkpoints excluded)."}),
		dropped:     prometheus.NewCounter(prometheus.CounterOpts{Name: MetricDropped, Help: "Audit records dropped because the writer fell behind (or, a caller's bug, because they claimed an event only the writer writes)."}),
		checkpoints: prometheus.NewCounter(prometheus.CounterOpts{Name: MetricCheckpoints, Help: "Signed audit checkpoints written."}),
		failures:    prometheus.NewCounter(prometheus.CounterOpts{Name: MetricCheckpointFailures, Help: "Audit checkpoints that could not be signed (no SVID, unusable key): the records were written unanchored."}),
	}
}

func (m metrics) register(r prometheus.Registerer) error {
	for _, c := range []prometheus.Collector{m.written, m.dropped, m.checkpoints, m.failures} {
		if err := r.Register(c); err != nil {
			return fmt.Errorf("audit: register metrics: %w", err)
		}
	}
	return nil
}
