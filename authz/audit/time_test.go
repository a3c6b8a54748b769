package audit_test

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/mesh-dev/mesh/authz/audit"
	"github.com/mesh-dev/mesh/internal/testpki"
)

// TestCheckpointInterval: a checkpoint follows the first unsigned record
// by CheckpointInterval, none is written while nothing happens, and
// shutdown signs what is left. The PKI lives in the bubble's fake time, so
// verifying at each checkpoint's time is real.
func TestCheckpointInterval(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		pki := testpki.New(t, "cluster.local")
		var out lockedBuffer
		w, err := audit.New(audit.Config{Out: &out, Stream: "s", SVIDs: pki.Source(t, backendID), CheckpointInterval: 10 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(t.Context())
		done := make(chan error)
		go func() { done <- w.Run(ctx) }()

		checkpoints := func(want int, when string) {
			t.Helper()
			synctest.Wait()
			if got := out.count(`"event":"checkpoint"`); got != want {
				t.Fatalf("%s: %d checkpoints, want %d:\n%s", when, got, want, out.String())
			}
		}
		for i := range 3 {
			w.Write(record(i))
		}
		checkpoints(0, "at once")
		time.Sleep(10*time.Second - time.Millisecond)
		checkpoints(0, "just before the interval")
		time.Sleep(time.Millisecond)
		checkpoints(1, "at the interval")
		if !strings.Contains(out.String(), `"checkpoint.seq":3,`) {
			t.Fatalf("the checkpoint does not cover the 3 records:\n%s", out.String())
		}
		time.Sleep(time.Hour - 20*time.Second) // idle, still inside the SVID's hour
		checkpoints(1, "idle")
		w.Write(record(3))
		time.Sleep(5 * time.Second)
		w.Write(record(4))
		time.Sleep(5 * time.Second)
		checkpoints(2, "10s after the first unsigned record, not the last")
		w.Write(record(5))
		synctest.Wait()
		cancel()
		if err := <-done; err != nil {
			t.Fatal(err)
		}
		checkpoints(3, "after shutdown")

		res, err := audit.Verify(strings.NewReader(out.String()), audit.VerifyOptions{Bundle: pki.Bundle(), Strict: true})
		if err != nil || res.Streams[0].Records != 9 || res.Streams[0].Checkpoints != 3 || res.Streams[0].Unanchored != 0 {
			t.Fatalf("Verify = %+v, %v", res, err)
		}
	})
}

// TestCheckpointAfterExpiry: a writer whose SVID expired does not sign
// checkpoints the verifier would reject; it counts the failures, retries
// every interval, and anchors everything once the SVID is renewed. A log
// verifies at its checkpoints' times, long after its SVIDs expired.
func TestCheckpointAfterExpiry(t *testing.T) {
	var log string
	var pki *testpki.PKI
	synctest.Test(t, func(t *testing.T) {
		pki = testpki.New(t, "cluster.local")
		src := pki.Source(t, backendID) // valid for an hour from now
		var out lockedBuffer
		var logs bytes.Buffer
		reg := prometheus.NewRegistry()
		w, err := audit.New(audit.Config{Out: &out, Stream: "s", SVIDs: src, Registerer: reg, Logger: slog.New(slog.NewTextHandler(&logs, nil))})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(t.Context())
		done := make(chan error)
		go func() { done <- w.Run(ctx) }()

		w.Write(record(0))
		time.Sleep(10 * time.Second)
		synctest.Wait()
		time.Sleep(2 * time.Hour)
		w.Write(record(1))
		time.Sleep(30 * time.Second)
		synctest.Wait()
		if got := counter(t, reg, audit.MetricCheckpointFailures); got != 3 {
			t.Fatalf("%s = %v after 3 intervals with an expired SVID, want 3", audit.MetricCheckpointFailures, got)
		}
		if got := counter(t, reg, audit.MetricCheckpoints); got != 1 {
			t.Fatalf("%s = %v, want 1 (before expiry)", audit.MetricCheckpoints, got)
		}
		if !strings.Contains(logs.String(), "is not valid at") {
			t.Fatalf("log = %q; want why", logs.String())
		}
		src.Rotate(t)
		time.Sleep(10 * time.Second)
		synctest.Wait()
		if got := counter(t, reg, audit.MetricCheckpoints); got != 2 {
			t.Fatalf("%s = %v after renewal, want 2", audit.MetricCheckpoints, got)
		}
		cancel()
		if err := <-done; err != nil {
			t.Fatal(err)
		}
		log = out.String()
	})
	// Outside the bubble it is years later: every certificate has expired,
	// and the log still verifies at its checkpoints' times.
	res, err := audit.Verify(strings.NewReader(log), audit.VerifyOptions{Bundle: pki.Bundle(), Strict: true})
	if err != nil || res.Streams[0].Checkpoints != 2 || res.Streams[0].Records != 4 {
		t.Fatalf("Verify = %+v, %v", res, err)
	}
}
