package main

import (
	"math"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mesh-dev/mesh/controlplane/scale"
)

func TestSplitScenarios(t *testing.T) {
	all := []string{scenarioSVID, scenarioCertify, scenarioPush}
	tests := []struct {
		in      string
		data    string
		cp      []string
		runData bool
	}{
		{"", "", all, true},
		{"latency,max", "latency,max", nil, true},
		{"svid", "", []string{"svid"}, false},
		{"push, latency ,svid,push", "latency", []string{"push", "svid"}, true},
		{"certify,nonsense", "nonsense", []string{"certify"}, true}, // pickScenarios refuses the unknown name
	}
	for _, tc := range tests {
		data, cp, runData := splitScenarios(tc.in)
		if data != tc.data || !slices.Equal(cp, tc.cp) || runData != tc.runData {
			t.Errorf("splitScenarios(%q) = %q, %q, %v; want %q, %q, %v", tc.in, data, cp, runData, tc.data, tc.cp, tc.runData)
		}
	}
	if _, err := pickScenarios("nonsense"); err == nil {
		t.Error("pickScenarios accepted an unknown scenario")
	}
}

func TestPercentile(t *testing.T) {
	ms := func(v ...int) []time.Duration {
		var out []time.Duration
		for _, x := range v {
			out = append(out, time.Duration(x)*time.Millisecond)
		}
		return out
	}
	tests := []struct {
		sorted []time.Duration
		p      float64
		want   time.Duration
	}{
		{ms(7), 0.5, 7 * time.Millisecond},
		{ms(7), 0.99, 7 * time.Millisecond},
		{ms(1, 2, 3, 4), 0.5, 2 * time.Millisecond},
		{ms(1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20), 0.99, 20 * time.Millisecond}, // 20 changes: the slowest
		{ms(slices.Collect(func(yield func(int) bool) {
			for i := 1; i <= 200; i++ {
				if !yield(i) {
					return
				}
			}
		})...), 0.99, 198 * time.Millisecond},
	}
	for _, tc := range tests {
		if got := scale.Percentile(tc.sorted, tc.p); got != tc.want {
			t.Errorf("percentile(%d values, %v) = %v, want %v", len(tc.sorted), tc.p, got, tc.want)
		}
	}
}

// TestIssue: every call is counted once, timed, and failures kept apart;
// the count bounds the calls.
func TestIssue(t *testing.T) {
	tests := []struct {
		name              string
		workers, count    int
		failEvery         int // 0: none
		wantOK, wantFails int
	}{
		{"one worker", 1, 50, 0, 50, 0},
		{"four workers", 4, 101, 0, 101, 0},
		{"failures", 3, 90, 3, 60, 30},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var (
				mu    sync.Mutex
				calls [8]int
				n     int64
			)
			r := issue(t.Context(), tc.workers, tc.count, time.Minute, func(w int) error {
				mu.Lock()
				calls[w]++
				n++
				fail := tc.failEvery > 0 && n%int64(tc.failEvery) == 0
				mu.Unlock()
				// Burn a little CPU so the process's CPU time moves.
				x := 1.0
				for i := range 20000 {
					x = math.Sqrt(x + float64(i))
				}
				if fail || x < 0 {
					return errTest
				}
				return nil
			})
			if r.Count != tc.wantOK || r.Failures != int64(tc.wantFails) || r.Workers != tc.workers {
				t.Fatalf("issue = %+v; want %d ok, %d failed, %d workers", r, tc.wantOK, tc.wantFails, tc.workers)
			}
			if tc.wantFails > 0 && r.FirstError != errTest.Error() {
				t.Errorf("first error %q", r.FirstError)
			}
			if r.PerSec <= 0 || r.P50Ms <= 0 || r.P99Ms < r.P50Ms || r.Seconds <= 0 {
				t.Errorf("figures %+v", r)
			}
			total := 0
			for _, c := range calls {
				total += c
			}
			if total != tc.count {
				t.Errorf("%d calls made, want %d", total, tc.count)
			}
		})
	}
	// A time limit bounds an unbounded count.
	start := time.Now()
	r := issue(t.Context(), 2, math.MaxInt32, 100*time.Millisecond, func(int) error { time.Sleep(time.Millisecond); return nil })
	if d := time.Since(start); d > 5*time.Second || r.Count == 0 {
		t.Errorf("time-bounded issue took %v for %d calls", d, r.Count)
	}
}

type testError string

func (e testError) Error() string { return string(e) }

const errTest = testError("bench: test failure")

// TestMeasureSVID runs the real issuance briefly: SVIDs come out, with a
// rate per core from the process's CPU time.
func TestMeasureSVID(t *testing.T) {
	r, err := measureSVID(t.Context(), 2, 300*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	if r.Count == 0 || r.Failures != 0 || r.PerCore <= 0 || r.Cores <= 0 || r.CPUSeconds <= 0 {
		t.Fatalf("svid figures %+v", r)
	}
}

// cpFixture is a control plane run with known figures.
func cpFixture() *ControlPlane {
	return &ControlPlane{
		SVID:    &Issuance{Workers: 2, Count: 6000, Seconds: 2, PerSec: 3000, CPUSeconds: 4, Cores: 2, PerCore: 1500, P50Ms: 0.6, P99Ms: 2.5},
		Certify: []Issuance{{Workers: 1, Count: 1000, PerSec: 400, P50Ms: 2.1, P99Ms: 4.8}, {Workers: 8, Count: 2000, Failures: 2, PerSec: 520, P50Ms: 10.6, P99Ms: 44, FirstError: "rpc error: `code` = Unavailable"}},
		Push: &PushFigures{Pods: 10000, Proxies: 1000, Changes: 20, LastAckP50Ms: 180, LastAckP99Ms: 1250, AckP50Ms: 150, AckP99Ms: 240,
			HeapMiB: 271.2, ControllerHeapMiB: 91.6, ProxiesHeapMiB: 51.1, Goroutines: 12042, CtlGoroutines: 4036, SyncSeconds: 23, ConnectSeconds: 1.2},
		Elapsed: "1m30s",
	}
}

func TestControlPlaneReport(t *testing.T) {
	const pushGoal, svidGoal = "policy change → all 1,000 proxies", "SVIDs issued per second per core (no TokenReview)"
	yes, no := true, false
	tests := []struct {
		name     string
		cp       *ControlPlane
		met      map[string]*bool
		measured map[string]string
		failures int64
		rows     []string // in the markdown
		absent   []string
	}{
		{
			name:     "not run",
			cp:       nil,
			met:      map[string]*bool{pushGoal: nil, svidGoal: nil},
			measured: map[string]string{pushGoal: "not measured", svidGoal: "not measured"},
			absent:   []string{"### Control plane"},
		},
		{
			name:     "every part",
			cp:       cpFixture(),
			met:      map[string]*bool{pushGoal: &no, svidGoal: &yes}, // 1250 ms ≥ 1 s; 1500 ≥ 1,000
			measured: map[string]string{pushGoal: "1250 ms p99 (p50 180 ms) over 20 changes", svidGoal: "1500 per core (3000/s on 2.00 cores)"},
			failures: 2,
			rows: []string{
				"### Control plane",
				"| SVID issuance without TokenReview, GOMAXPROCS = 2 workers | 3000/s; 1500/s per core (2.00 cores used by the process) |",
				"| SVID issuance without TokenReview, latency p50 / p99 | 0.60 / 2.50 ms (6000 SVIDs, 0 failed) |",
				"| Certify with TokenReview, 1 at a time | 400/s; p50 2.10 ms, p99 4.80 ms (1000 calls, 0 failed) |",
				"| Certify with TokenReview, 8 at a time | 520/s; p50 10.60 ms, p99 44.00 ms (2000 calls, 2 failed) |",
				"| policy change → last of 1,000 acks, p50 / p99 | 180 / 1250 ms (20 changes, 0 failed) |",
				"| policy change → each ack, p50 / p99 | 150 / 240 ms |",
				"| controller heap, 10,000 pods and 1,000 streams | 91.6 MiB (by the heap profile; the whole process, both ends and the fake API: 271.2 MiB) |",
				"| controller goroutines | 4036 (the whole process: 12042) |",
				"| setup: informer sync; 1,000 connections and first acks | 23.0 s; 1.2 s |",
				"First failure of certify: `rpc error: 'code' = Unavailable`.",
				"sharing the machine's cores",
			},
			absent: []string{"skipped"},
		},
		{
			name: "certify skipped, push failed at once, slow issuance",
			cp: &ControlPlane{
				SVID:    &Issuance{Workers: 2, Count: 1000, PerSec: 900, Cores: 1, PerCore: 900},
				Skipped: map[string]string{scenarioCertify: "no local cluster: cluster: kube-apiserver not found in /x (run `make tools`)"},
				Push:    &PushFigures{Pods: 10000, Proxies: 1000, Failures: 1, FirstError: "scale: 999 of 1000 proxies acknowledged"},
			},
			met:      map[string]*bool{pushGoal: nil, svidGoal: &no},
			measured: map[string]string{pushGoal: "not measured", svidGoal: "900 per core"},
			failures: 1,
			rows:     []string{"| Certify with TokenReview | **skipped**: no local cluster: cluster: kube-apiserver not found in /x (run `make tools`) |", "First failure of push: `scale: 999 of 1000 proxies acknowledged`."},
			absent:   []string{"Certify with TokenReview, 1 at a time"},
		},
		{
			name:     "fast but failing issuance is not met",
			cp:       &ControlPlane{SVID: &Issuance{Workers: 2, Count: 10, Failures: 5, PerSec: 5000, Cores: 1, PerCore: 5000}},
			met:      map[string]*bool{pushGoal: nil, svidGoal: &no},
			measured: map[string]string{svidGoal: "5000 per core"},
			failures: 5,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := &Results{Rounds: rounds3(), ControlPlane: tc.cp}
			r.summarise()
			seen := map[string]bool{}
			for _, g := range r.Goals {
				want, ok := tc.met[g.Figure]
				if !ok {
					continue
				}
				seen[g.Figure] = true
				if (want == nil) != (g.Met == nil) || (want != nil && *want != *g.Met) {
					t.Errorf("goal %q met %v, want %v (%s)", g.Figure, g.Met, want, g.Measured)
				}
				if m := tc.measured[g.Figure]; !strings.Contains(g.Measured, m) {
					t.Errorf("goal %q measured %q, want it to contain %q", g.Figure, g.Measured, m)
				}
			}
			if len(seen) != 2 {
				t.Errorf("control-plane goals present: %v, want both", seen)
			}
			// The data plane's rounds3 have 2 failed requests.
			if got := r.failures(); got != 2+tc.failures {
				t.Errorf("%d failures, want %d", got, 2+tc.failures)
			}
			md := r.markdown()
			for _, s := range tc.rows {
				if !strings.Contains(md, s) {
					t.Errorf("markdown lacks %q:\n%s", s, md)
				}
			}
			for _, s := range tc.absent {
				if strings.Contains(md, s) {
					t.Errorf("markdown has %q:\n%s", s, md)
				}
			}
		})
	}
}

func TestThousands(t *testing.T) {
	for in, want := range map[int]string{0: "0", 999: "999", 1000: "1,000", 10000: "10,000", 1234567: "1,234,567", -1000: "-1,000", math.MinInt64: "-9,223,372,036,854,775,808"} {
		if got := thousands(in); got != want {
			t.Errorf("thousands(%d) = %q, want %q", in, got, want)
		}
	}
}
