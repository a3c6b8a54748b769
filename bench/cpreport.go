package main

import (
	"fmt"
	"strconv"
	"strings"
)

// The control plane's part of the report: its two goals and its table.

// goals are issue 14's control-plane goals against this run;
// a part that did not run is "not measured", judged neither way.
func (cp *ControlPlane) goals() []Goal {
	met := func(b bool) *bool { return &b }
	push := Goal{Figure: "policy change → all 1,000 proxies", Goal: "< 1 s p99", Measured: "not measured by this run (scenario push)"}
	if p := cp.push(); p != nil {
		push.Measured = fmt.Sprintf("%.0f ms p99 (p50 %.0f ms) over %d changes", p.LastAckP99Ms, p.LastAckP50Ms, p.Changes)
		push.Met = met(p.Failures == 0 && p.LastAckP99Ms < 1000)
	}
	svid := Goal{Figure: "SVIDs issued per second per core (no TokenReview)", Goal: "≥ 1,000", Measured: "not measured by this run (scenario svid)"}
	if s := cp.svid(); s != nil {
		svid.Measured = fmt.Sprintf("%.0f per core (%.0f/s on %.2f cores)", s.PerCore, s.PerSec, s.Cores)
		svid.Met = met(s.Failures == 0 && s.PerCore >= 1000)
	}
	return []Goal{push, svid}
}

// push and svid are the parts with figures, or nil.
func (cp *ControlPlane) push() *PushFigures {
	if cp == nil || cp.Push == nil || cp.Push.Changes == 0 {
		return nil
	}
	return cp.Push
}

func (cp *ControlPlane) svid() *Issuance {
	if cp == nil || cp.SVID == nil || cp.SVID.Count == 0 {
		return nil
	}
	return cp.SVID
}

// failures are the control plane's failed calls and pushes.
func (cp *ControlPlane) failures() int64 {
	if cp == nil {
		return 0
	}
	var n int64
	if cp.SVID != nil {
		n += cp.SVID.Failures
	}
	for _, c := range cp.Certify {
		n += c.Failures
	}
	if cp.Push != nil {
		n += cp.Push.Failures
	}
	return n
}

// markdown is the "Control plane" table, or "" when no part ran.
func (cp *ControlPlane) markdown() string {
	if cp == nil {
		return ""
	}
	var b strings.Builder
	b.WriteString("\n### Control plane\n\n")
	fmt.Fprintf(&b, "Measured in the harness's own process (%s in all), after the data plane when it runs, sharing the machine's cores with it and, for Certify, with the local kube-apiserver and etcd: figures for orientation, not capacity planning. Percentiles are nearest-rank: over fewer than 100 changes, p99 is the slowest.\n\n", cp.Elapsed)
	b.WriteString("| figure | this run |\n| --- | --- |\n")
	row := func(figure, format string, args ...any) {
		fmt.Fprintf(&b, "| %s | "+format+" |\n", append([]any{figure}, args...)...)
	}
	if s := cp.SVID; s != nil {
		row(fmt.Sprintf("SVID issuance without TokenReview, GOMAXPROCS = %d workers", s.Workers), "%.0f/s; %.0f/s per core (%.2f cores used by the process)", s.PerSec, s.PerCore, s.Cores)
		row("SVID issuance without TokenReview, latency p50 / p99", "%.2f / %.2f ms (%d SVIDs, %d failed)", s.P50Ms, s.P99Ms, s.Count, s.Failures)
	}
	for _, c := range cp.Certify {
		row(fmt.Sprintf("Certify with TokenReview, %d at a time", c.Workers), "%.0f/s; p50 %.2f ms, p99 %.2f ms (%d calls, %d failed)", c.PerSec, c.P50Ms, c.P99Ms, c.Count, c.Failures)
	}
	if r, ok := cp.Skipped[scenarioCertify]; ok {
		row("Certify with TokenReview", "**skipped**: %s", strings.ReplaceAll(r, "|", "\\|"))
	}
	if p := cp.Push; p != nil {
		row(fmt.Sprintf("policy change → last of %s acks, p50 / p99", thousands(p.Proxies)), "%.0f / %.0f ms (%d changes, %d failed)", p.LastAckP50Ms, p.LastAckP99Ms, p.Changes, p.Failures)
		row("policy change → each ack, p50 / p99", "%.0f / %.0f ms", p.AckP50Ms, p.AckP99Ms)
		row(fmt.Sprintf("controller heap, %s pods and %s streams", thousands(p.Pods), thousands(p.Proxies)), "%.1f MiB (by the heap profile; the whole process, both ends and the fake API: %.1f MiB)", p.ControllerHeapMiB, p.HeapMiB)
		row("controller goroutines", "%d (the whole process: %d)", p.CtlGoroutines, p.Goroutines)
		row("setup: informer sync; 1,000 connections and first acks", "%.1f s; %.1f s", p.SyncSeconds, p.ConnectSeconds)
	}
	for _, k := range []string{scenarioSVID, scenarioCertify, scenarioPush} {
		if e := cp.firstError(k); e != "" {
			fmt.Fprintf(&b, "\nFirst failure of %s: `%s`.\n", k, strings.ReplaceAll(e, "`", "'"))
		}
	}
	return b.String()
}

func (cp *ControlPlane) firstError(part string) string {
	switch part {
	case scenarioSVID:
		if cp.SVID != nil {
			return cp.SVID.FirstError
		}
	case scenarioCertify:
		for _, c := range cp.Certify {
			if c.FirstError != "" {
				return c.FirstError
			}
		}
	case scenarioPush:
		if cp.Push != nil {
			return cp.Push.FirstError
		}
	}
	return ""
}

// thousands writes n with commas, as the rest of the document does.
func thousands(n int) string {
	s, sign := strconv.Itoa(n), ""
	if n < 0 {
		s, sign = s[1:], "-"
	}
	for i := len(s) - 3; i > 0; i -= 3 {
		s = s[:i] + "," + s[i:]
	}
	return sign + s
}
