package main

import (
	"errors"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/mesh-dev/mesh/e2e/prereq"
)

// TestMeasureCertify runs make bench's certify part small, on a real local
// kube-apiserver and etcd (its own, in a temporary folder, as make bench
// starts one): every call is a Certify with a TokenReview and a pod read,
// over gRPC with TLS. It checks the figures are consistent, not how fast
// they are: the machine is shared.
func TestMeasureCertify(t *testing.T) {
	if testing.Short() {
		t.Skip("needs a local cluster; skipped in -short mode")
	}
	prereq.Command(t, "etcd")
	for _, tool := range []string{"kube-apiserver", "kube-controller-manager", "kube-scheduler"} {
		prereq.Tool(t, tool)
	}
	dir := filepath.Join(t.TempDir(), "cluster")
	// Workers 2 with a count that does not divide evenly: the count, not
	// the workers, bounds the calls.
	calls := map[int]int{1: 4, 2: 7}
	res, err := measureCertify(t.Context(), dir, calls)
	if err != nil {
		var skip *skipError
		if errors.As(err, &skip) {
			t.Fatalf("measureCertify skipped although the prerequisites are there: %v", err)
		}
		t.Fatalf("measureCertify: %v (cluster logs in %s)", err, filepath.Join(dir, "logs"))
	}
	if len(res) != len(calls) {
		t.Fatalf("measureCertify gave %d measurements, want %d: %+v", len(res), len(calls), res)
	}
	for i, workers := range []int{1, 2} { // in order of concurrency
		r := res[i]
		if r.Workers != workers {
			t.Errorf("measurement %d is for %d workers, want %d", i, r.Workers, workers)
			continue
		}
		if r.Count != calls[workers] || r.Failures != 0 || r.FirstError != "" {
			t.Errorf("%d at a time: %d calls, %d failed (%q); want %d, none failed", workers, r.Count, r.Failures, r.FirstError, calls[workers])
		}
		if r.Seconds <= 0 || r.P50Ms <= 0 || r.P99Ms < r.P50Ms || r.P99Ms > r.Seconds*1000 {
			t.Errorf("%d at a time: %.3f s, p50 %.3f ms, p99 %.3f ms: want 0 < p50 ≤ p99 ≤ the whole run", workers, r.Seconds, r.P50Ms, r.P99Ms)
		}
		if want := float64(r.Count) / r.Seconds; math.Abs(r.PerSec-want) > 1e-9*want {
			t.Errorf("%d at a time: %.3f/s, want calls / seconds = %.3f", workers, r.PerSec, want)
		}
		// Certify's work is the API server's and etcd's, so the process's
		// CPU is not reported for it (the table would mislead).
		if r.CPUSeconds != 0 || r.Cores != 0 || r.PerCore != 0 {
			t.Errorf("%d at a time: CPU figures %v s, %v cores, %v per core; want none", workers, r.CPUSeconds, r.Cores, r.PerCore)
		}
	}
	// The cluster is stopped when measureCertify returns: Stop removes
	// each process's pid file once the process exited.
	pids, err := filepath.Glob(filepath.Join(dir, "pids", "*.pid"))
	if err != nil || len(pids) != 0 {
		t.Errorf("cluster processes left after measureCertify: %v %v", pids, err)
	}
}

// TestMeasureCertifyNoCluster: without the pinned programs the part is
// skipped with the reason, which make bench writes into the table, rather
// than failing the run.
func TestMeasureCertifyNoCluster(t *testing.T) {
	tools := t.TempDir()
	t.Setenv("MESH_TOOLS_DIR", tools)
	dir := filepath.Join(t.TempDir(), "cluster")
	res, err := measureCertify(t.Context(), dir, map[int]int{1: 1})
	var skip *skipError
	if !errors.As(err, &skip) || res != nil {
		t.Fatalf("measureCertify without kube-apiserver = %v, %v; want a skip", res, err)
	}
	if want := "no local cluster: cluster: kube-apiserver not found in " + tools + " (run `make tools`)"; !strings.HasPrefix(err.Error(), want) {
		t.Errorf("skipped because %q, want it to start %q", err, want)
	}
	if _, err := os.Stat(filepath.Join(dir, "pids")); !os.IsNotExist(err) {
		t.Errorf("a skipped part started something: %v", err)
	}
}
