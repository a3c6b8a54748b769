package webhook

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	admissionv1 "k8s.io/api/admission/v1"
)

// Metric names.
const (
	RequestsMetric        = "mesh_controller_webhook_requests_total"
	CertExpiryMetric      = "mesh_controller_webhook_cert_expiry_timestamp_seconds"
	RenewalFailuresMetric = "mesh_controller_webhook_cert_renewal_failures_total"
	BundleUpdatesMetric   = "mesh_controller_webhook_cabundle_updates_total"
)

type metrics struct {
	requests        *prometheus.CounterVec
	certExpiry      prometheus.Gauge
	renewalFailures prometheus.Counter
	bundleUpdates   *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{Name: RequestsMetric,
			Help: "Admission requests answered, by webhook (inject, validate-policy) and result (injected, skipped, ignored, denied, allowed, error, bad_request)."},
			[]string{"webhook", "result"}),
		certExpiry:      prometheus.NewGauge(prometheus.GaugeOpts{Name: CertExpiryMetric, Help: "When the webhook serving certificate in use expires (Unix seconds)."}),
		renewalFailures: prometheus.NewCounter(prometheus.CounterOpts{Name: RenewalFailuresMetric, Help: "Failed renewals of the webhook serving certificate (the current one stays in use until it expires)."}),
		bundleUpdates: prometheus.NewCounterVec(prometheus.CounterOpts{Name: BundleUpdatesMetric,
			Help: "Writes of the webhook configurations' caBundle, by kind and result (updated, error)."}, []string{"kind", "result"}),
	}
	if reg == nil {
		return m, nil
	}
	for _, c := range []prometheus.Collector{m.requests, m.certExpiry, m.renewalFailures, m.bundleUpdates} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}

type resultKey struct{}

// setResult records a request's result for count; handlers that do not
// call it are judged by their response.
func setResult(r *http.Request, result string) {
	if p, ok := r.Context().Value(resultKey{}).(*string); ok {
		*p = result
	}
}

// count counts each request to h by its result.
func (m *metrics) count(webhook string, h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var result string
		rec := &recorder{ResponseWriter: w, status: http.StatusOK}
		h.ServeHTTP(rec, r.WithContext(context.WithValue(r.Context(), resultKey{}, &result)))
		switch {
		case result != "":
		case rec.status >= 500:
			result = "error"
		case rec.status != http.StatusOK:
			result = "bad_request"
		default:
			// authz/webhook's handler: read its verdict from the review.
			var review admissionv1.AdmissionReview
			if json.Unmarshal(rec.body.Bytes(), &review) != nil || review.Response == nil {
				result = "error"
			} else if review.Response.Allowed {
				result = "allowed"
			} else {
				result = "denied"
			}
		}
		if rec.status >= 500 {
			result = "error"
		}
		m.requests.WithLabelValues(webhook, result).Inc()
	})
}

// recorder keeps the status and (bounded) body of a response.
type recorder struct {
	http.ResponseWriter
	status int
	body   bytes.Buffer
}

func (r *recorder) WriteHeader(code int) { r.status = code; r.ResponseWriter.WriteHeader(code) }

func (r *recorder) Write(b []byte) (int, error) {
	if r.body.Len() < maxBody {
		r.body.Write(b)
	}
	return r.ResponseWriter.Write(b)
}
