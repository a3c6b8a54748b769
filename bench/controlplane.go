package main

// The control plane at scale (issue 14): SVID issuance with and without
// TokenReview, and a policy change pushed to 1,000 proxies. Unlike the
// data plane these run in this process, the way the Go benchmarks of
// packages ca, identity and controlplane do, and share the machine's cores
// with whatever else runs.

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"fmt"
	"log"
	"log/slog"
	"maps"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"golang.org/x/time/rate"
	"k8s.io/client-go/kubernetes"

	"github.com/mesh-dev/mesh/ca"
	"github.com/mesh-dev/mesh/controlplane/scale"
	"github.com/mesh-dev/mesh/e2e/cluster"
	"github.com/mesh-dev/mesh/identity"
	identityv1 "github.com/mesh-dev/mesh/identity/api/v1"
	"github.com/mesh-dev/mesh/identity/identitytest"
	"github.com/mesh-dev/mesh/identity/meshid"
)

// The control-plane scenarios, selectable with -scenarios beside the data
// plane's.
const (
	scenarioSVID    = "svid"
	scenarioCertify = "certify"
	scenarioPush    = "push"
)

var controlPlaneScenarios = []ScenarioInfo{
	{scenarioSVID, "the CA issuing SVIDs without TokenReview, as the identity service does once a caller is authenticated (CSR parsed and its signature checked, SVID signed and validated), one worker per GOMAXPROCS, in this process: rate, rate per core used (from the process's CPU time) and latency percentiles"},
	{scenarioCertify, "the identity service's Certify over gRPC with TLS on loopback, TokenReview and pod read on a local kube-apiserver and etcd (e2e/cluster) included, at 1 and 8 calls at a time: rate and latency percentiles; the Kubernetes client is not rate-limited here (mesh-controller's is: 100 requests/s, two per Certify)"},
	{scenarioPush, "package controlplane/scale: one controller with 10,000 pods (client-go's fake clientset) and 1,000 simulated proxies, each on its own mutual-TLS gRPC stream; a change to a root-namespace AuthorizationPolicy, which applies to every pod, timed to the last proxy's acknowledgement; the controller's heap and goroutines with every stream up, from the heap profile"},
}

// ControlPlane is results.json's controlPlane: this run's control-plane
// figures. A part that did not run is nil, with the reason in Skipped.
type ControlPlane struct {
	SVID    *Issuance    `json:"svid,omitempty"`
	Certify []Issuance   `json:"certify,omitempty"`
	Push    *PushFigures `json:"push,omitempty"`
	// Skipped says, by scenario, why a selected part did not run.
	Skipped map[string]string `json:"skipped,omitempty"`
	Elapsed string            `json:"elapsed"`
}

// Issuance is one issuance measurement: Count calls by Workers at once.
type Issuance struct {
	Workers  int     `json:"workers"`
	Count    int     `json:"count"`
	Failures int64   `json:"failures"`
	Seconds  float64 `json:"seconds"`
	PerSec   float64 `json:"perSecond"`
	P50Ms    float64 `json:"p50Ms"`
	P99Ms    float64 `json:"p99Ms"`
	// CPUSeconds is this process's CPU time over the measurement, Cores
	// CPUSeconds/Seconds and PerCore Count/CPUSeconds; zero for Certify,
	// whose work is mostly the API server's and etcd's.
	CPUSeconds float64 `json:"cpuSeconds,omitempty"`
	Cores      float64 `json:"cores,omitempty"`
	PerCore    float64 `json:"perCore,omitempty"`
	FirstError string  `json:"firstError,omitempty"`
}

// PushFigures are the policy push's: change → acknowledgements over
// Changes changes, and the memory with every stream up.
type PushFigures struct {
	Pods              int     `json:"pods"`
	Proxies           int     `json:"proxies"`
	Changes           int     `json:"changes"`
	LastAckP50Ms      float64 `json:"lastAckP50Ms"`
	LastAckP99Ms      float64 `json:"lastAckP99Ms"`
	AckP50Ms          float64 `json:"ackP50Ms"`
	AckP99Ms          float64 `json:"ackP99Ms"`
	HeapMiB           float64 `json:"heapMiB"`
	ControllerHeapMiB float64 `json:"controllerHeapMiB"`
	ProxiesHeapMiB    float64 `json:"proxiesHeapMiB"`
	Goroutines        int     `json:"goroutines"`
	CtlGoroutines     int     `json:"ctlGoroutines"`
	SyncSeconds       float64 `json:"syncSeconds"`
	ConnectSeconds    float64 `json:"connectSeconds"`
	FirstError        string  `json:"firstError,omitempty"`
	Failures          int64   `json:"failures"`
}

// splitScenarios separates -scenarios into the data plane's list (for
// pickScenarios; "" is all of them) and the control-plane parts, and says
// whether the data plane runs at all.
func splitScenarios(list string) (data string, controlPlane []string, runData bool) {
	if strings.TrimSpace(list) == "" {
		return "", []string{scenarioSVID, scenarioCertify, scenarioPush}, true
	}
	var rest []string
	for _, n := range strings.Split(list, ",") {
		n = strings.TrimSpace(n)
		if slices.ContainsFunc(controlPlaneScenarios, func(s ScenarioInfo) bool { return s.Name == n }) {
			if !slices.Contains(controlPlane, n) {
				controlPlane = append(controlPlane, n)
			}
			continue
		}
		rest = append(rest, n)
	}
	return strings.Join(rest, ","), controlPlane, len(rest) > 0
}

// measureAll runs the selected data-plane scenarios (measure) and then the
// control plane's.
func measureAll(ctx context.Context, e *env, o options) (*Results, error) {
	data, parts, runData := splitScenarios(o.scenarios)
	var res *Results
	if runData {
		targets, err := pickTargets(o.targets, e)
		if err != nil {
			return nil, err
		}
		scenarios, err := pickScenarios(data)
		if err != nil {
			return nil, err
		}
		if res, err = measure(ctx, e, targets, scenarios, o.rounds, o.duration); err != nil {
			return nil, err
		}
	} else {
		res = &Results{Meta: e.meta}
		res.Meta.Rounds, res.Meta.Duration = o.rounds, o.duration.String()
	}
	if len(parts) == 0 {
		return res, nil
	}
	for _, s := range controlPlaneScenarios {
		if slices.Contains(parts, s.Name) {
			res.Scenarios = append(res.Scenarios, s)
		}
	}
	// The data plane pinned this process to the load generator's core;
	// the control plane has every core.
	if e.haveTaskset {
		if err := exec.Command("taskset", "-a", "-p", "-c", fmt.Sprintf("0-%d", runtime.NumCPU()-1), strconv.Itoa(os.Getpid())).Run(); err != nil {
			log.Printf("bench: control plane: unpinning this process: %v", err)
		}
		// The runtime lowered GOMAXPROCS to the pinned CPU set; it would
		// raise it again only at its next periodic check.
		runtime.SetDefaultGOMAXPROCS()
	}
	cp, err := measureControlPlane(ctx, e.work, parts, o.quick, o.duration)
	if err != nil {
		return nil, err
	}
	res.ControlPlane = cp
	res.summarise()
	return res, nil
}

// measureControlPlane runs the parts named, in a fixed order: issuance,
// Certify on a local cluster (stopped before the next), the push.
func measureControlPlane(ctx context.Context, work string, parts []string, quick bool, duration time.Duration) (*ControlPlane, error) {
	start := time.Now()
	cp := &ControlPlane{Skipped: map[string]string{}}
	if slices.Contains(parts, scenarioSVID) {
		log.Printf("control plane: %s, %d workers for %s", scenarioSVID, runtime.GOMAXPROCS(0), duration)
		s, err := measureSVID(ctx, runtime.GOMAXPROCS(0), duration)
		if err != nil {
			return nil, err
		}
		cp.SVID = s
	}
	if slices.Contains(parts, scenarioCertify) {
		calls := map[int]int{1: 1000, 8: 2000}
		if quick {
			calls = map[int]int{1: 100, 8: 200}
		}
		log.Printf("control plane: %s, starting a local cluster", scenarioCertify)
		res, err := measureCertify(ctx, filepath.Join(work, "cluster"), calls)
		var skip *skipError
		switch {
		case errors.As(err, &skip):
			log.Printf("control plane: %s skipped: %v", scenarioCertify, skip)
			cp.Skipped[scenarioCertify] = skip.Error()
		case err != nil:
			return nil, err
		}
		cp.Certify = res
	}
	if slices.Contains(parts, scenarioPush) {
		changes := 20
		if quick {
			changes = 3
		}
		log.Printf("control plane: %s, %d pods, %d proxies, %d changes", scenarioPush, scale.DefaultPods, scale.DefaultProxies, changes)
		p, err := measurePush(ctx, changes)
		if err != nil {
			return nil, err
		}
		cp.Push = p
	}
	cp.Elapsed = time.Since(start).Round(time.Second).String()
	return cp, nil
}

// issue runs op from workers goroutines until count calls were made or
// limit passed, and times each call.
func issue(ctx context.Context, workers, count int, limit time.Duration, op func(worker int) error) Issuance {
	ctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	var (
		next     atomic.Int64
		failures atomic.Int64
		errOnce  sync.Once
		firstErr error
		wg       sync.WaitGroup
	)
	took := make([][]time.Duration, workers)
	cpu0, start := processCPU(), time.Now()
	for w := range workers {
		wg.Go(func() {
			for ctx.Err() == nil && next.Add(1) <= int64(count) {
				t := time.Now()
				if err := op(w); err != nil {
					failures.Add(1)
					errOnce.Do(func() { firstErr = err })
					continue
				}
				took[w] = append(took[w], time.Since(t))
			}
		})
	}
	wg.Wait()
	wall, cpu := time.Since(start), processCPU()-cpu0
	all := slices.Concat(took...)
	slices.Sort(all)
	r := Issuance{Workers: workers, Count: len(all), Failures: failures.Load(), Seconds: wall.Seconds(), CPUSeconds: cpu.Seconds()}
	if firstErr != nil {
		r.FirstError = firstErr.Error()
	}
	if len(all) > 0 {
		r.PerSec = float64(len(all)) / wall.Seconds()
		r.P50Ms, r.P99Ms = ms(scale.Percentile(all, 0.50)), ms(scale.Percentile(all, 0.99))
	}
	if cpu > 0 {
		r.Cores, r.PerCore = cpu.Seconds()/wall.Seconds(), float64(len(all))/cpu.Seconds()
	}
	return r
}

// measureSVID issues SVIDs from an in-memory CA as the identity service
// does after authentication: parse the CSR and check its signature, check
// what it asks for, sign, validate (SignSVID validates what it mints).
// Each worker has its own key and CSR, made beforehand as a proxy would.
func measureSVID(ctx context.Context, workers int, duration time.Duration) (*Issuance, error) {
	td := spiffeid.RequireTrustDomainFromString("cluster.local")
	authority, err := ca.New(ctx, ca.Config{TrustDomain: td, Store: &ca.MemoryStore{}, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		return nil, fmt.Errorf("bench: svid: %w", err)
	}
	csrs := make([][]byte, workers)
	ids := make([]spiffeid.ID, workers)
	for w := range workers {
		if ids[w], err = meshid.ForServiceAccount(td, "shop", fmt.Sprintf("web-%d", w)); err != nil {
			return nil, fmt.Errorf("bench: svid: %w", err)
		}
		if csrs[w], err = newCSR(); err != nil {
			return nil, err
		}
	}
	r := issue(ctx, workers, math.MaxInt32, duration, func(w int) error {
		csr, err := identity.ParseCSR(csrs[w])
		if err != nil {
			return err
		}
		if err := identity.CheckCSRIdentity(csr, ids[w]); err != nil {
			return err
		}
		_, err = authority.SignSVID(csr, ids[w], 0)
		return err
	})
	if r.CPUSeconds == 0 {
		return nil, errors.New("bench: svid: this process's CPU time did not move (getrusage)")
	}
	return &r, nil
}

func newCSR() ([]byte, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("bench: key: %w", err)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	if err != nil {
		return nil, fmt.Errorf("bench: CSR: %w", err)
	}
	return der, nil
}

// skipError is a part that could not run on this machine, and why.
type skipError struct{ reason string }

func (e *skipError) Error() string { return e.reason }

// measureCertify starts a local cluster in dir (kube-apiserver and the
// rest from MESH_TOOLS_DIR or .cache/bin, etcd from PATH; `make bench`
// builds them with `make tools` first), an identity service on it, and
// makes calls[c] Certify calls c at a time, each bounded to a minute.
func measureCertify(ctx context.Context, dir string, calls map[int]int) ([]Issuance, error) {
	if err := os.RemoveAll(dir); err != nil {
		return nil, err
	}
	c, err := cluster.New(cluster.Config{Dir: dir, Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))})
	if err != nil {
		return nil, &skipError{fmt.Sprintf("no local cluster: %v", err)}
	}
	if err := c.Start(ctx); err != nil {
		_ = c.Stop()
		return nil, fmt.Errorf("bench: certify: local cluster (logs in %s): %w", filepath.Join(dir, "logs"), err)
	}
	defer func() {
		if err := c.Stop(); err != nil {
			log.Printf("bench: certify: stop the local cluster: %v", err)
		}
	}()
	// The service's client is not rate-limited, so this measures the
	// service and the API server, not client-go's token bucket.
	rc := c.RESTConfig()
	rc.QPS, rc.Burst = -1, 0
	kube, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return nil, fmt.Errorf("bench: certify: %w", err)
	}
	svc, err := identitytest.Start(ctx, kube, identity.ServerConfig{RatePerPod: rate.Inf, RatePerSource: rate.Inf})
	if err != nil {
		return nil, fmt.Errorf("bench: certify: %w", err)
	}
	defer svc.Close()
	if err := identitytest.Namespace(ctx, kube, "shop", "web"); err != nil {
		return nil, fmt.Errorf("bench: certify: %w", err)
	}
	pod, err := identitytest.Pod(ctx, kube, "shop", "web-bench", "web")
	if err != nil {
		return nil, fmt.Errorf("bench: certify: %w", err)
	}
	tok, err := identitytest.Token(ctx, kube, pod, identity.DefaultAudience, true)
	if err != nil {
		return nil, fmt.Errorf("bench: certify: %w", err)
	}
	var out []Issuance
	for _, conc := range slices.Sorted(maps.Keys(calls)) {
		reqs := make([]*identityv1.CertifyRequest, conc)
		for w := range reqs {
			der, err := newCSR()
			if err != nil {
				return nil, err
			}
			reqs[w] = &identityv1.CertifyRequest{Csr: der, Token: tok}
		}
		log.Printf("control plane: %s, %d calls, %d at a time", scenarioCertify, calls[conc], conc)
		r := issue(ctx, conc, calls[conc], time.Minute, func(w int) error {
			_, err := svc.Client.Certify(ctx, reqs[w])
			return err
		})
		r.CPUSeconds, r.Cores, r.PerCore = 0, 0, 0
		out = append(out, r)
	}
	return out, nil
}

// measurePush runs package scale's fixture for changes policy changes.
func measurePush(ctx context.Context, changes int) (*PushFigures, error) {
	f, err := scale.Start(ctx, scale.Config{})
	if err != nil {
		return nil, fmt.Errorf("bench: push: %w", err)
	}
	defer f.Close()
	p := &PushFigures{Pods: f.Config.Pods, Proxies: f.Config.Proxies}
	var last, acks []time.Duration
	for range changes {
		r, err := f.Push(ctx)
		if err != nil {
			p.Failures++
			p.FirstError = err.Error()
			break // the fixture's proxies may be gone; the rest would fail alike
		}
		last, acks = append(last, r.Last), append(acks, r.Acks...)
	}
	p.Changes = len(last)
	if len(last) > 0 {
		slices.Sort(last)
		slices.Sort(acks)
		p.LastAckP50Ms, p.LastAckP99Ms = ms(scale.Percentile(last, 0.50)), ms(scale.Percentile(last, 0.99))
		p.AckP50Ms, p.AckP99Ms = ms(scale.Percentile(acks, 0.50)), ms(scale.Percentile(acks, 0.99))
	}
	s, m := f.Setup, f.Setup.Memory
	p.HeapMiB = float64(m.HeapInUse) / (1 << 20)
	p.ControllerHeapMiB, p.ProxiesHeapMiB = m.ByHeap["controller"]/(1<<20), m.ByHeap["proxies"]/(1<<20)
	p.Goroutines, p.CtlGoroutines = m.Goroutines, m.ByGoroutines["controller"]
	p.SyncSeconds, p.ConnectSeconds = s.Sync.Seconds(), s.Connect.Seconds()
	return p, nil
}

// processCPU is this process's CPU time, user and system, of every thread
// that ever ran (getrusage sums the exited ones too).
func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
