package policystatus

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/util/validation"
)

// Report ConfigMaps: one per controller replica, in the controller's
// namespace, named ReportPrefix + the replica's name.
const (
	ReportPrefix = "mesh-enforcement-"
	// ReportLabel, set to "true", marks a report ConfigMap.
	ReportLabel = "mesh.dev/enforcement-report"
	// ReportKey is the ConfigMap key holding the report's JSON.
	ReportKey = "report.json"
)

// MaxReportSize bounds a report, as the API server bounds a ConfigMap
// (1 MiB); a larger one is refused before it is decoded.
const MaxReportSize = 1 << 20

// ReportName is the name of replica's report ConfigMap.
func ReportName(replica string) string { return ReportPrefix + replica }

// Report is what one replica's proxies enforce.
type Report struct {
	// Replica is the controller replica that wrote the report.
	Replica string `json:"replica"`
	// Updated is when it was written, RFC 3339.
	Updated time.Time `json:"updated"`
	// Policies maps each policy, "namespace/name", to the
	// metadata.generations its proxies enforce and how many proxies
	// enforce each.
	Policies map[string]map[int64]int32 `json:"policies"`
}

// ParseReport decodes and checks a report. It is the Writer's parser of
// what other replicas wrote, so it refuses anything it would have to
// guess about: an oversized report, a missing replica or time, a key that
// is not namespace/name, a generation below 1 or a negative count.
// Unknown fields are ignored, so replicas of two versions can run side by
// side during an upgrade.
func ParseReport(b []byte) (*Report, error) {
	if len(b) > MaxReportSize {
		return nil, fmt.Errorf("policystatus: report of %d bytes, more than %d", len(b), MaxReportSize)
	}
	var r Report
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("policystatus: report: %w", err)
	}
	if r.Replica == "" {
		return nil, errors.New("policystatus: report: no replica")
	}
	if r.Updated.IsZero() {
		return nil, fmt.Errorf("policystatus: report of replica %q: no updated time", r.Replica)
	}
	for key, gens := range r.Policies {
		if err := checkEntry(key, gens); err != nil {
			return nil, fmt.Errorf("policystatus: report of replica %q: %w", r.Replica, err)
		}
	}
	return &r, nil
}

// checkEntry checks one policy's counts.
func checkEntry(key string, gens map[int64]int32) error {
	ns, name, ok := strings.Cut(key, "/")
	if !ok {
		return fmt.Errorf("policy %q is not namespace/name", key)
	}
	if e := validation.IsDNS1123Label(ns); len(e) > 0 {
		return fmt.Errorf("policy %q: namespace: %s", key, e[0])
	}
	if e := validation.IsDNS1123Subdomain(name); len(e) > 0 {
		return fmt.Errorf("policy %q: name: %s", key, e[0])
	}
	for gen, n := range gens {
		if gen < 1 {
			return fmt.Errorf("policy %q: generation %d, want at least 1", key, gen)
		}
		if n < 0 {
			return fmt.Errorf("policy %q generation %d: count %d is negative", key, gen, n)
		}
	}
	return nil
}

// encode is the report's JSON: the same counts give the same bytes
// (encoding/json sorts map keys).
func (r *Report) encode() ([]byte, error) {
	b, err := json.Marshal(r)
	if err != nil {
		return nil, fmt.Errorf("policystatus: encode report: %w", err)
	}
	return b, nil
}

// fresh reports whether r was written within staleAfter of now. A report
// dated in the future by more than staleAfter is not fresh either: its
// writer's clock is wrong, and trusting it would keep a dead replica's
// counts alive for as long as the clock is ahead.
func (r *Report) fresh(now time.Time, staleAfter time.Duration) bool {
	age := now.Sub(r.Updated)
	return age <= staleAfter && age >= -staleAfter
}
