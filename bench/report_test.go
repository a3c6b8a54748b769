package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestMedian(t *testing.T) {
	tests := []struct {
		in   []float64
		want float64
	}{
		{[]float64{3}, 3},
		{[]float64{5, 1, 3}, 3},
		{[]float64{4, 1, 3, 2}, 2.5},
		{[]float64{10, 10, 1000}, 10}, // one noisy round does not move it
	}
	for _, tc := range tests {
		in := append([]float64(nil), tc.in...)
		if got := median(tc.in); got != tc.want {
			t.Errorf("median(%v) = %v, want %v", tc.in, got, tc.want)
		}
		for i := range in {
			if in[i] != tc.in[i] {
				t.Fatalf("median reordered its input: %v", tc.in)
			}
		}
	}
}

// rounds3 is three rounds of five targets with known medians; mesh-tcp,
// the reference, has only some figures.
func rounds3() []Round {
	var out []Round
	for i, f := range []float64{1, 3, 2} { // medians are the ×2 values
		for _, tg := range []struct {
			name string
			v    map[string]float64
		}{
			{"direct", map[string]float64{"latency_p99_ms": 1 * f, "max_rps": 40000 * f, "newconn_rps": 10000 * f}},
			{"mesh", map[string]float64{"latency_p99_ms": 2 * f, "max_rps": 10000 * f, "newconn_rps": 9500 * f, "cpu_us_per_req_pair": 25 * f, "cpu_us_per_req_client_newconn": 30 * f, "rss_idle_client_mib": 5 * f, "rss_idle_server_mib": 6 * f}},
			{"mesh-tcp", map[string]float64{"latency_p99_ms": 1.5 * f, "max_rps": 15000 * f}},
			{"haproxy", map[string]float64{"latency_p99_ms": 3 * f, "max_rps": 20000 * f}},
			{"nginx", map[string]float64{"latency_p99_ms": 2.5 * f, "max_rps": 21000 * f}},
		} {
			r := Round{Round: i + 1, Target: tg.name, Values: tg.v, Failures: map[string]int64{}}
			if tg.name == "nginx" && i == 1 {
				r.Failures["max"] = 2
			}
			out = append(out, r)
		}
	}
	return out
}

func TestSummarise(t *testing.T) {
	r := &Results{Rounds: rounds3()}
	r.summarise()
	if got := r.Median["mesh"]["max_rps"]; got != 20000 {
		t.Errorf("mesh max_rps median %v, want 20000", got)
	}
	if got := r.RatioToDirect["mesh"]["newconn_rps"]; got != 0.95 {
		t.Errorf("mesh newconn ratio %v, want 0.95", got)
	}
	if _, ok := r.RatioToDirect["mesh"]["cpu_us_per_req_pair"]; ok {
		t.Error("a ratio for a figure direct does not have")
	}
	if got := r.failures(); got != 2 {
		t.Errorf("%d failures, want 2", got)
	}
	want := map[string]bool{
		"p99 at 1,000 req/s, pair":                         true,  // 4 ≤ min(6, 5)
		"max req/s, pair on one core":                      false, // 20000 < 42000
		"proxy CPU per request at 1,000 req/s, both sides": true,  // 50 ≤ 60
		"new client connection per request":                true,  // 0.95 ≥ 0.9
		"idle RSS per proxy":                               true,  // 12 < 15
	}
	seen := 0
	for _, g := range r.Goals {
		w, ok := want[g.Figure]
		if !ok {
			if g.Met != nil {
				t.Errorf("goal %q judged without a figure", g.Figure)
			}
			continue
		}
		seen++
		if g.Met == nil || *g.Met != w {
			t.Errorf("goal %q met %v, want %v (%s)", g.Figure, g.Met, w, g.Measured)
		}
	}
	if seen != len(want) {
		t.Errorf("%d of %d goals judged", seen, len(want))
	}
	md := r.markdown()
	for _, s := range []string{"Failed requests: 2", "nginx max 2", "| figure | direct | mesh | mesh-tcp | haproxy | nginx |",
		"| max req/s, keep-alive | 80000 | 20000 (0.25) | 30000 (0.38) | 40000 (0.50) | 42000 (0.53) |",
		"| req/s, new client connection per request | 20000 | 19000 (0.95) | — | — | — |",
		// A figure only mesh has: no ratio, a dash for the others.
		"| CPU per request, new connection per request, client side (µs) | — | 60 | — | — | — |"} {
		if !strings.Contains(md, s) {
			t.Errorf("markdown lacks %q:\n%s", s, md)
		}
	}
}

// TestWriteDoc: only the generated part is replaced, however often; a
// document without one gets it appended.
func TestWriteDoc(t *testing.T) {
	r := &Results{Rounds: rounds3()}
	r.summarise()
	dir := t.TempDir()
	doc := filepath.Join(dir, "benchmarks.md")
	head, tail := "# Benchmarks\n\nHand-written.\n\n", "\n\n## CA and identity\n\nMore hand-written.\n"
	if err := os.WriteFile(doc, []byte(head+beginMarker+"\nold figures\n"+endMarker+tail), 0o644); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if err := writeDoc(doc, r); err != nil {
			t.Fatal(err)
		}
	}
	b, _ := os.ReadFile(doc)
	s := string(b)
	if !strings.HasPrefix(s, head+beginMarker) || !strings.HasSuffix(s, endMarker+tail) {
		t.Fatalf("hand-written parts changed:\n%s", s)
	}
	if strings.Contains(s, "old figures") || strings.Count(s, beginMarker) != 1 || strings.Count(s, "### Goals") != 1 {
		t.Fatalf("generated part not replaced exactly once:\n%s", s)
	}

	plain := filepath.Join(dir, "plain.md")
	if err := os.WriteFile(plain, []byte("# Other\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := writeDoc(plain, r); err != nil {
		t.Fatal(err)
	}
	b, _ = os.ReadFile(plain)
	if !strings.HasPrefix(string(b), "# Other\n\n"+beginMarker) || !strings.HasSuffix(string(b), endMarker+"\n") {
		t.Fatalf("not appended:\n%s", b)
	}
}

// TestProcStat reads this process's own CPU time and memory.
func TestProcStat(t *testing.T) {
	// Spin until the CPU time moves by 30 ms; on a busy machine that may
	// take longer than 30 ms.
	before := cpuTime(os.Getpid())
	moved := false
	for start := time.Now(); time.Since(start) < 5*time.Second && !moved; {
		moved = cpuTime(os.Getpid())-before >= 30*time.Millisecond
	}
	if !moved {
		t.Errorf("CPU time moved %s over 5 s of spinning", cpuTime(os.Getpid())-before)
	}
	if rss, hwm := rssMiB(os.Getpid(), "VmRSS"), rssMiB(os.Getpid(), "VmHWM"); rss <= 0 || hwm < rss {
		t.Errorf("VmRSS %v MiB, VmHWM %v MiB", rss, hwm)
	}
	if cpuTime(-1) != 0 || rssMiB(-1, "VmRSS") != 0 {
		t.Error("figures for a process that does not exist")
	}
}

// TestMarkdownControlPlaneOnly: a run of the control plane alone has no
// data-plane table, not an empty one.
func TestMarkdownControlPlaneOnly(t *testing.T) {
	r := &Results{}
	r.summarise()
	md := r.markdown()
	if strings.Contains(md, "### Every figure") || strings.Contains(md, "| figure |\n") {
		t.Fatalf("an empty data-plane table:\n%s", md)
	}
	full := &Results{Rounds: rounds3()}
	full.summarise()
	if !strings.Contains(full.markdown(), "### Every figure") {
		t.Fatal("no data-plane table with data-plane rounds")
	}
}
