package controlplane_test

// The controller at scale (issue 10): package scale's one controller,
// 10,000 meshed pods and 1,000 simulated proxies each on its own
// mutual-TLS connection. It is a benchmark, not a timed test: it reports,
// and fails only when acknowledgements do not arrive at all. `make bench`
// runs the same fixture.

import (
	"slices"
	"testing"
	"time"

	"github.com/mesh-dev/mesh/controlplane/scale"
)

// BenchmarkPolicyPushToLastAck measures, per iteration, the time from a
// change to a root-namespace AuthorizationPolicy (which applies to all
// 10,000 pods) to the acknowledgement of the recompiled policy by the
// last of 1,000 connected proxies, and reports over the iterations:
//
//	last-ack-p50-ms, last-ack-p99-ms  change → last of the 1,000 acks (nearest rank: with 20 iterations p99 is the slowest)
//	ack-p50-ms, ack-p99-ms            change → each single ack, over every ack of every iteration
//	heap-MiB, goroutines              the whole process once the 1,000 streams are up (both ends, and the fake API)
//	ctl-heap-MiB, ctl-goroutines      of those, the controller's: its informers' caches, inventory, gRPC server and streams
//	proxies-heap-MiB                  the simulated proxies' gRPC clients
//	sync-s, connect-s                 informer sync; 1,000 handshakes, watches and first acks
//
// An ack is timed when the proxy's AckPolicy call returns, so after the
// server counted it. The shares of the heap are read from the heap
// profile (sampled every 64 KiB, so estimates of live bytes, which
// heap-MiB's spans exceed) by the stacks that allocated them.
func BenchmarkPolicyPushToLastAck(b *testing.B) {
	if testing.Short() {
		b.Skip("scale benchmark: 10,000 pods and 1,000 streams")
	}
	f, err := scale.Start(b.Context(), scale.Config{})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(f.Close)

	var lastAcks, acks []time.Duration
	for b.Loop() {
		p, err := f.Push(b.Context())
		if err != nil {
			b.Fatal(err)
		}
		lastAcks = append(lastAcks, p.Last)
		acks = append(acks, p.Acks...)
	}
	slices.Sort(lastAcks)
	slices.Sort(acks)
	s, m := f.Setup, f.Setup.Memory
	b.ReportMetric(ms(scale.Percentile(lastAcks, 0.50)), "last-ack-p50-ms")
	b.ReportMetric(ms(scale.Percentile(lastAcks, 0.99)), "last-ack-p99-ms")
	b.ReportMetric(ms(scale.Percentile(acks, 0.50)), "ack-p50-ms")
	b.ReportMetric(ms(scale.Percentile(acks, 0.99)), "ack-p99-ms")
	b.ReportMetric(mib(m.HeapInUse), "heap-MiB")
	b.ReportMetric(m.ByHeap["controller"]/(1<<20), "ctl-heap-MiB")
	b.ReportMetric(m.ByHeap["proxies"]/(1<<20), "proxies-heap-MiB")
	b.ReportMetric(float64(m.Goroutines), "goroutines")
	b.ReportMetric(float64(m.ByGoroutines["controller"]), "ctl-goroutines")
	b.ReportMetric(s.Sync.Seconds(), "sync-s")
	b.ReportMetric(s.Connect.Seconds(), "connect-s")
	b.Logf("heap in use: %.1f MiB at start, %.1f MiB with the fake API's %d pods, %.1f MiB synced, %.1f MiB with %d streams (%d goroutines, %d more than before the streams); "+
		"live by the heap profile: controller %.1f MiB, proxies %.1f MiB, rest (fake API, setup) %.1f MiB; goroutines: controller %d, proxies %d, rest %d",
		mib(s.HeapAtStart), mib(s.HeapWithAPI), f.Config.Pods, mib(s.HeapSynced), mib(m.HeapInUse), f.Config.Proxies, m.Goroutines, m.Goroutines-s.GoroutinesSynced,
		m.ByHeap["controller"]/(1<<20), m.ByHeap["proxies"]/(1<<20), m.ByHeap[""]/(1<<20),
		m.ByGoroutines["controller"], m.ByGoroutines["proxies"], m.ByGoroutines[""])
}

func mib(n uint64) float64 { return float64(n) / (1 << 20) }

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
