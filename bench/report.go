package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// Results is bench/results.json.
type Results struct {
	Meta      Meta           `json:"meta"`
	Scenarios []ScenarioInfo `json:"scenarios"`
	// Rounds are every round's raw figures, target by target.
	Rounds []Round `json:"rounds"`
	// Median is each target's median over the rounds, per metric.
	Median map[string]map[string]float64 `json:"median"`
	// RatioToDirect is Median divided by direct's, where direct has the
	// metric.
	RatioToDirect map[string]map[string]float64 `json:"ratioToDirect"`
	// Failures are failed requests per target and scenario, all rounds.
	Failures map[string]map[string]int64 `json:"failures"`
	Goals    []Goal                      `json:"goals"`
	// ControlPlane is nil when no control-plane scenario ran.
	ControlPlane *ControlPlane `json:"controlPlane,omitempty"`
}

// Meta says where and how the figures were made.
type Meta struct {
	Date      string            `json:"date"`
	Commit    string            `json:"commit"`
	GoVersion string            `json:"goVersion"`
	Kernel    string            `json:"kernel"`
	CPU       string            `json:"cpu"`
	CPUs      int               `json:"cpus"`
	ProxyCore int               `json:"proxyCore"`
	LoadCore  int               `json:"loadCore"`
	Versions  map[string]string `json:"versions"`
	Rounds    int               `json:"rounds"`
	Duration  string            `json:"duration"`
	Elapsed   string            `json:"elapsed"`
	Notes     []string          `json:"notes,omitempty"`
}

// ScenarioInfo names and describes a scenario.
type ScenarioInfo struct {
	Name  string `json:"name"`
	About string `json:"about"`
}

// Round is one target's figures in one round.
type Round struct {
	Round    int                `json:"round"`
	Target   string             `json:"target"`
	Values   map[string]float64 `json:"values"`
	Failures map[string]int64   `json:"failures"`
}

// Goal is one of issue 14's goals and mesh's measured value.
type Goal struct {
	Figure   string `json:"figure"`
	Goal     string `json:"goal"`
	Measured string `json:"measured"`
	Met      *bool  `json:"met,omitempty"` // nil: not measured by make bench
}

// metric describes a figure for the document.
type metric struct {
	key, label string
	higher     bool // higher is better
	format     string
}

var metrics = []metric{
	{"latency_p50_ms", "p50 at 1,000 req/s (ms)", false, "%.2f"},
	{"latency_p90_ms", "p90 at 1,000 req/s (ms)", false, "%.2f"},
	{"latency_p99_ms", "p99 at 1,000 req/s (ms)", false, "%.2f"},
	{"latency_p99.9_ms", "p99.9 at 1,000 req/s (ms)", false, "%.2f"},
	{"max_rps", "max req/s, keep-alive", true, "%.0f"},
	{"max_p99_ms", "p99 at max (ms)", false, "%.2f"},
	{"newconn_rps", "req/s, new client connection per request", true, "%.0f"},
	{"handshake_rps", "req/s, full mTLS handshake per request", true, "%.0f"},
	{"bulk_mbps", "one-connection bulk throughput (Mbit/s)", true, "%.0f"},
	{"grpc_msgs_per_s", "gRPC messages/s, 16 long-lived streams", true, "%.0f"},
	{"grpc_p50_ms", "gRPC round trip p50 (ms)", false, "%.2f"},
	{"grpc_p99_ms", "gRPC round trip p99 (ms)", false, "%.2f"},
	{"cpu_us_per_req_client", "CPU per request at 1,000 req/s, client side (µs)", false, "%.0f"},
	{"cpu_us_per_req_server", "CPU per request at 1,000 req/s, server side (µs)", false, "%.0f"},
	{"cpu_us_per_req_pair", "CPU per request at 1,000 req/s, both sides (µs)", false, "%.0f"},
	{"cpu_us_per_req_pair_at_max", "CPU per request at max, both sides (µs)", false, "%.0f"},
	{"cpu_us_per_req_client_newconn", "CPU per request, new connection per request, client side (µs)", false, "%.0f"},
	{"cpu_us_per_req_server_newconn", "CPU per request, new connection per request, server side (µs)", false, "%.0f"},
	{"cpu_us_per_req_pair_newconn", "CPU per request, new connection per request, both sides (µs)", false, "%.0f"},
	{"rss_idle_client_mib", "idle RSS, client side (MiB)", false, "%.1f"},
	{"rss_idle_server_mib", "idle RSS, server side (MiB)", false, "%.1f"},
	{"rss_peak_client_mib", "peak RSS, client side (MiB)", false, "%.1f"},
	{"rss_peak_server_mib", "peak RSS, server side (MiB)", false, "%.1f"},
}

func median(v []float64) float64 {
	s := slices.Clone(v)
	slices.Sort(s)
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

// summarise computes the medians, ratios, failure totals and goals.
func (r *Results) summarise() {
	values := map[string]map[string][]float64{}
	r.Failures = map[string]map[string]int64{}
	for _, rd := range r.Rounds {
		if values[rd.Target] == nil {
			values[rd.Target] = map[string][]float64{}
			r.Failures[rd.Target] = map[string]int64{}
		}
		for k, v := range rd.Values {
			values[rd.Target][k] = append(values[rd.Target][k], v)
		}
		for k, n := range rd.Failures {
			r.Failures[rd.Target][k] += n
		}
	}
	r.Median = map[string]map[string]float64{}
	for t, m := range values {
		r.Median[t] = map[string]float64{}
		for k, v := range m {
			r.Median[t][k] = median(v)
		}
	}
	r.RatioToDirect = map[string]map[string]float64{}
	if direct, ok := r.Median["direct"]; ok {
		for t, m := range r.Median {
			r.RatioToDirect[t] = map[string]float64{}
			for k, v := range m {
				if d, ok := direct[k]; ok && d != 0 {
					r.RatioToDirect[t][k] = v / d
				}
			}
		}
	}
	r.Goals = r.goals()
}

func (r *Results) failures() int64 {
	var n int64
	for _, m := range r.Failures {
		for _, v := range m {
			n += v
		}
	}
	return n + r.ControlPlane.failures()
}

// goals are issue 14's goals against this run.
func (r *Results) goals() []Goal {
	mesh := r.Median["mesh"]
	get := func(t, k string) (float64, bool) {
		v, ok := r.Median[t][k]
		return v, ok
	}
	met := func(b bool) *bool { return &b }
	var out []Goal
	best := func(k string, higher bool) (float64, bool) {
		var vs []float64
		for _, t := range []string{"haproxy", "nginx"} {
			if v, ok := get(t, k); ok {
				vs = append(vs, v)
			}
		}
		if len(vs) == 0 {
			return 0, false
		}
		if higher {
			return slices.Max(vs), true
		}
		return slices.Min(vs), true
	}
	if m, ok := mesh["latency_p99_ms"]; ok {
		if b, ok := best("latency_p99_ms", false); ok {
			out = append(out, Goal{"p99 at 1,000 req/s, pair", fmt.Sprintf("≤ the better of HAProxy and NGINX (%.2f ms)", b), fmt.Sprintf("%.2f ms", m), met(m <= b)})
		}
	}
	if m, ok := mesh["max_rps"]; ok {
		if b, ok := best("max_rps", true); ok {
			out = append(out, Goal{"max req/s, pair on one core", fmt.Sprintf("≥ the better of the two (%.0f)", b), fmt.Sprintf("%.0f", m), met(m >= b)})
		}
	}
	if m, ok := mesh["cpu_us_per_req_pair"]; ok {
		out = append(out, Goal{"proxy CPU per request at 1,000 req/s, both sides", "≤ 60 µs", fmt.Sprintf("%.0f µs", m), met(m <= 60)})
	}
	if m, ok := r.RatioToDirect["mesh"]["newconn_rps"]; ok {
		out = append(out, Goal{"new client connection per request", "≥ 0.9 of direct", fmt.Sprintf("%.2f of direct", m), met(m >= 0.9)})
	}
	if c, ok := mesh["rss_idle_client_mib"]; ok {
		s := mesh["rss_idle_server_mib"]
		out = append(out, Goal{"idle RSS per proxy", "< 15 MiB", fmt.Sprintf("%.1f MiB client, %.1f MiB server", c, s), met(math.Max(c, s) < 15)})
	}
	out = append(out, r.ControlPlane.goals()...)
	return out
}

func writeResults(name string, r *Results) error {
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(name), 0o755); err != nil {
		return err
	}
	return os.WriteFile(name, append(b, '\n'), 0o644)
}

// The generated part of docs/benchmarks.md is between these markers;
// the rest of the document is written by hand.
const (
	beginMarker = "<!-- make bench: generated from here; edits are overwritten -->"
	endMarker   = "<!-- make bench: end of the generated part -->"
)

// writeDoc replaces the generated section of name (appending one if the
// document has none).
func writeDoc(name string, r *Results) error {
	old, err := os.ReadFile(name)
	if err != nil && !os.IsNotExist(err) {
		return err
	}
	gen := beginMarker + "\n" + r.markdown() + endMarker
	var doc string
	i, j := bytes.Index(old, []byte(beginMarker)), bytes.Index(old, []byte(endMarker))
	if i >= 0 && j > i {
		doc = string(old[:i]) + gen + string(old[j+len(endMarker):])
	} else {
		doc = strings.TrimRight(string(old), "\n") + "\n\n" + gen + "\n"
	}
	if err := os.MkdirAll(filepath.Dir(name), 0o755); err != nil {
		return err
	}
	return os.WriteFile(name, []byte(doc), 0o644)
}

func (r *Results) targets() []string {
	var out []string
	for _, t := range []string{"direct", "mesh", "mesh-tcp", "haproxy", "nginx"} {
		if _, ok := r.Median[t]; ok {
			out = append(out, t)
		}
	}
	return out
}

func (r *Results) markdown() string {
	var b strings.Builder
	m := r.Meta
	fmt.Fprintf(&b, "\nRun of %s at commit %s: %s, %d CPUs (%s), Linux %s, %s.\n", m.Date, m.Commit, m.GoVersion, m.CPUs, m.CPU, m.Kernel, strings.Join(versions(m.Versions), ", "))
	fmt.Fprintf(&b, "%d round(s) of %s per scenario, targets interleaved; medians of the rounds; whole run %s. Proxies on core %d, load generator and backend on core %d.\n", m.Rounds, m.Duration, m.Elapsed, m.ProxyCore, m.LoadCore)
	for _, n := range m.Notes {
		fmt.Fprintf(&b, "Note: %s.\n", n)
	}
	fmt.Fprintf(&b, "Failed requests: %d", r.failures())
	if r.failures() > 0 {
		b.WriteString(" (**every request must succeed: this run does not count**):")
		for _, t := range r.targets() {
			for s, n := range r.Failures[t] {
				if n > 0 {
					fmt.Fprintf(&b, " %s %s %d;", t, s, n)
				}
			}
		}
	}
	b.WriteString(".\n\n### Goals (issue 14)\n\n| figure | goal | mesh, this run | met |\n| --- | --- | --- | --- |\n")
	for _, g := range r.Goals {
		met := "—"
		if g.Met != nil {
			met = map[bool]string{true: "✔", false: "✘"}[*g.Met]
		}
		fmt.Fprintf(&b, "| %s | %s | %s | %s |\n", g.Figure, g.Goal, g.Measured, met)
	}
	ts := r.targets()
	// A run of the control plane alone has no data-plane table.
	if len(ts) > 0 {
		b.WriteString("\n### Every figure\n\nMedians; in brackets, the ratio to direct.\n\n| figure |")
		for _, t := range ts {
			fmt.Fprintf(&b, " %s |", t)
		}
		b.WriteString("\n| --- |" + strings.Repeat(" --- |", len(ts)) + "\n")
		for _, mt := range metrics {
			var row strings.Builder
			any := false
			fmt.Fprintf(&row, "| %s |", mt.label)
			for _, t := range ts {
				v, ok := r.Median[t][mt.key]
				if !ok {
					row.WriteString(" — |")
					continue
				}
				any = true
				fmt.Fprintf(&row, " "+mt.format, v)
				if ratio, ok := r.RatioToDirect[t][mt.key]; ok && t != "direct" {
					fmt.Fprintf(&row, " (%.2f)", ratio)
				}
				row.WriteString(" |")
			}
			if any {
				b.WriteString(row.String() + "\n")
			}
		}
	}
	b.WriteString(r.ControlPlane.markdown())
	b.WriteString("\n### Scenarios\n\n")
	for _, s := range r.Scenarios {
		fmt.Fprintf(&b, "- `%s`: %s.\n", s.Name, s.About)
	}
	b.WriteString("\n")
	return b.String()
}

func versions(v map[string]string) []string {
	var out []string
	for k, s := range v {
		out = append(out, k+": "+s)
	}
	slices.Sort(out)
	return out
}
