package scale

import (
	"context"
	"math"

	"fmt"
	"log/slog"
	"net"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/client-go/tools/cache"

	"github.com/mesh-dev/mesh/authz"
	"github.com/mesh-dev/mesh/ca"
	"github.com/mesh-dev/mesh/controlplane"
	controlplanev1 "github.com/mesh-dev/mesh/controlplane/api/v1"
	"github.com/mesh-dev/mesh/controlplane/inventory"
	"github.com/mesh-dev/mesh/identity"
	"github.com/mesh-dev/mesh/identity/meshid"
)

// round is one push being measured: the root policy's generation
// that every proxy must acknowledge, and each proxy's time to its ack.
type round struct {
	gen   int64
	start time.Time
	took  []time.Duration // by proxy; each written by its proxy only
	acks  atomic.Int32
	done  chan struct{} // closed at the last proxy's ack
}

func newRound(gen int64, proxies int) *round {
	return &round{gen: gen, start: time.Now(), took: make([]time.Duration, proxies), done: make(chan struct{})}
}

// proxy is one simulated proxy: its pod and its own connection,
// which presents an SVID of the pod's ServiceAccount.
type proxy struct {
	idx     int
	ns, pod string
	conn    *grpc.ClientConn
	lastGen int64 // the root generation last counted; its goroutine's own
}

// Config sizes the fixture.
type Config struct {
	// Pods in the cluster; zero means DefaultPods. At least Apps.
	Pods int
	// Proxies: the first Proxies pods stream; zero means DefaultProxies.
	// At most Pods.
	Proxies int
}

// Fixture is the running controller and its proxies, from Start to
// Close.
type Fixture struct {
	// Config is what the fixture runs, its zero values filled in.
	Config Config
	// Setup is what it took to start, and the memory once every stream
	// was up.
	Setup Setup

	srv      *controlplane.Server
	policies *policySource
	round    atomic.Pointer[round]
	gen      int64 // the root policy's current generation; Push's own

	failOnce sync.Once
	failed   chan struct{} // closed at a proxy's first error
	failErr  error

	closeOnce sync.Once
	stops     []func() // undo what Start did, in reverse
	rate      int      // runtime.MemProfileRate before Start
}

// Setup is how the fixture came up.
type Setup struct {
	// Sync is the informers' sync over the pods; Connect the
	// proxies' handshakes, watches and first acks.
	Sync, Connect time.Duration
	// HeapAtStart, HeapWithAPI and HeapSynced are the process's heap in
	// use (bytes, after a full collection) before anything, with the fake
	// API's objects, and with the controller synced but no stream.
	HeapAtStart, HeapWithAPI, HeapSynced uint64
	// GoroutinesSynced are the process's goroutines before the streams.
	GoroutinesSynced int
	// Memory is with every stream up.
	Memory Memory
}

// Memory is the process's heap and goroutines, and the shares of each side.
type Memory struct {
	// HeapInUse is the whole process's heap in use after a full
	// collection (bytes), Goroutines its goroutines: both ends, the fake
	// API and whatever else the caller runs.
	HeapInUse  uint64
	Goroutines int
	// ByHeap estimates the live bytes each side allocated, from the heap
	// profile (sampled every 64 KiB): "controller" (its informers' caches,
	// inventory, gRPC server and streams), "proxies" (their gRPC clients)
	// and "" (the rest). ByGoroutines counts goroutines the same way.
	ByHeap       map[string]float64
	ByGoroutines map[string]int
}

// Push is one measured policy change.
type Push struct {
	// Last is the change → the last of the proxies' acks; Acks each proxy's
	// change → its ack, by proxy.
	Last time.Duration
	Acks []time.Duration
}

func (f *Fixture) fail(err error) {
	f.failOnce.Do(func() {
		f.failErr = err
		close(f.failed)
	})
}

// run is a proxy's policy watch, as the real client does it: receive a
// policy, enforce it (nothing to do here), acknowledge its version.
func (f *Fixture) run(ctx context.Context, p *proxy) {
	cp := controlplanev1.NewControlPlaneClient(p.conn)
	stream, err := cp.WatchPolicy(ctx, &controlplanev1.WatchRequest{Namespace: p.ns, Pod: p.pod})
	if err != nil {
		if ctx.Err() == nil {
			f.fail(fmt.Errorf("scale: proxy %s/%s: WatchPolicy: %w", p.ns, p.pod, err))
		}
		return
	}
	for {
		pol, err := stream.Recv()
		if err != nil {
			if ctx.Err() == nil {
				f.fail(fmt.Errorf("scale: proxy %s/%s: policy stream: %w", p.ns, p.pod, err))
			}
			return
		}
		if _, err := cp.AckPolicy(ctx, &controlplanev1.PolicyAck{Namespace: p.ns, Pod: p.pod, Version: pol.GetVersion()}); err != nil {
			if ctx.Err() == nil {
				f.fail(fmt.Errorf("scale: proxy %s/%s: ack of %s: %w", p.ns, p.pod, pol.GetVersion(), err))
			}
			return
		}
		// The ack has been counted by the server when AckPolicy returns.
		gen := rootGeneration(pol)
		r := f.round.Load()
		if r == nil || gen != r.gen || p.lastGen == gen {
			continue
		}
		p.lastGen = gen
		r.took[p.idx] = time.Since(r.start)
		if int(r.acks.Add(1)) == len(r.took) {
			close(r.done)
		}
	}
}

// rootGeneration is the generation of the root policy that pol applies,
// or 0.
func rootGeneration(pol *controlplanev1.Policy) int64 {
	for _, r := range pol.GetApplied() {
		if r.GetNamespace() == authz.RootNamespace && r.GetName() == rootPolicy {
			return r.GetGeneration()
		}
	}
	return 0
}

// wait waits for r's last ack, a proxy's failure, timeout or ctx.
func (f *Fixture) wait(ctx context.Context, r *round, timeout time.Duration) error {
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return fmt.Errorf("scale: waiting for root policy generation %d: %w", r.gen, context.Cause(ctx))
	case <-r.done:
		return nil
	case <-f.failed:
		return f.failErr
	case <-t.C:
		return fmt.Errorf("scale: %d of %d proxies acknowledged root policy generation %d within %v", r.acks.Load(), len(r.took), r.gen, timeout)
	}
}

// checkEnforced checks the server's own count: every proxy enforces
// generation gen of the root policy, none an older one.
func (f *Fixture) checkEnforced(gen int64) error {
	counts := f.srv.Enforcement()[authz.RootNamespace+"/"+rootPolicy]
	if int(counts[gen]) != f.Config.Proxies || len(counts) != 1 {
		return fmt.Errorf("scale: the server counts root policy enforcement %v, want %d at generation %d only", counts, f.Config.Proxies, gen)
	}
	return nil
}

// Start builds the cluster, syncs a controller over it, serves the
// control-plane API on loopback with mutual TLS, and connects the
// proxies, each with its own SVID, waiting for every proxy's first ack.
// ctx bounds the setup; Close stops everything Start started.
func Start(ctx context.Context, cfg Config) (_ *Fixture, err error) {
	if cfg.Pods == 0 {
		cfg.Pods = DefaultPods
	}
	if cfg.Proxies == 0 {
		cfg.Proxies = DefaultProxies
	}
	if cfg.Pods < Apps || cfg.Proxies < 1 || cfg.Proxies > cfg.Pods || cfg.Pods > maxPods {
		return nil, fmt.Errorf("scale: %d pods and %d proxies: want %d to %d pods and 1 proxy to one per pod", cfg.Pods, cfg.Proxies, Apps, maxPods)
	}
	f := &Fixture{Config: cfg, failed: make(chan struct{}), gen: 1, rate: runtime.MemProfileRate}
	defer func() {
		if err != nil {
			f.Close()
		}
	}()
	// Sample the heap finely enough to tell the sides apart; restored by
	// Close.
	runtime.MemProfileRate = 64 << 10
	f.Setup.HeapAtStart, _ = heapInUse()

	// The cluster.
	kube := fake.NewClientset(objects(cfg.Pods)...)
	f.Setup.HeapWithAPI, _ = heapInUse()
	f.policies = &policySource{root: rootAt(f.gen), apps: appPolicies()}
	factory := informers.NewSharedInformerFactory(kube, 0)
	policyInf := f.policies.informer()
	inv, err := inventory.New(inventory.Config{TrustDomain: trustDomain, Informers: factory, Policies: policyInf})
	if err != nil {
		return nil, fmt.Errorf("scale: %w", err)
	}
	authority, err := ca.New(ctx, ca.Config{TrustDomain: trustDomain, Store: &ca.MemoryStore{}, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		return nil, fmt.Errorf("scale: %w", err)
	}
	f.srv, err = controlplane.New(controlplane.Config{Inventory: inv, Bundle: authority, TrustDomain: trustDomain, AllowAnyAddress: true})
	if err != nil {
		return nil, fmt.Errorf("scale: %w", err)
	}

	syncStart := time.Now()
	infCtx, stopInformers := context.WithCancel(context.Background())
	var infWG sync.WaitGroup
	infWG.Go(func() { policyInf.RunWithContext(infCtx) })
	factory.Start(infCtx.Done())
	f.stops = append(f.stops, func() {
		stopInformers()
		factory.Shutdown()
		infWG.Wait()
	})
	syncCtx, cancelSync := context.WithTimeout(ctx, setupTimeout)
	synced := cache.WaitForCacheSync(syncCtx.Done(), inv.HasSynced)
	cancelSync()
	if !synced {
		return nil, fmt.Errorf("scale: the informers did not sync within %v: %w", setupTimeout, context.Cause(syncCtx))
	}
	f.Setup.Sync = time.Since(syncStart)

	// The controller's gRPC server, as mesh-controller builds it.
	ctlID := spiffeid.RequireFromPath(trustDomain, "/ns/"+authz.RootNamespace+"/sa/mesh-controller")
	ctl, err := identity.NewSelfSource(authority, ctlID)
	if err != nil {
		return nil, fmt.Errorf("scale: %w", err)
	}
	gopts, err := identity.ServerOptions(identity.TransportConfig{})
	if err != nil {
		return nil, fmt.Errorf("scale: %w", err)
	}
	gs := grpc.NewServer(append(gopts, grpc.Creds(credentials.NewTLS(controlplane.ServerTLS(ctl, ctl))))...)
	f.srv.Register(gs)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("scale: %w", err)
	}
	var serveWG sync.WaitGroup
	serveWG.Go(func() { _ = gs.Serve(lis) })
	f.stops = append(f.stops, func() {
		gs.Stop()
		serveWG.Wait()
	})
	f.Setup.HeapSynced, f.Setup.GoroutinesSynced = heapInUse()

	// The proxies: each its own SVID and connection, as a real proxy.
	proxies := make([]*proxy, 0, cfg.Proxies)
	f.stops = append(f.stops, func() {
		for _, p := range proxies {
			_ = p.conn.Close()
		}
	})
	bundle := x509bundle.FromX509Authorities(trustDomain, authority.Bundle())
	for i := range cfg.Proxies {
		app := i % Apps
		id, err := meshid.ForServiceAccount(trustDomain, namespace(app), appName(app))
		if err != nil {
			return nil, fmt.Errorf("scale: %w", err)
		}
		svid, err := identity.NewSelfSource(authority, id)
		if err != nil {
			return nil, fmt.Errorf("scale: SVID for %s: %w", id, err)
		}
		tc := tlsconfig.MTLSClientConfig(svid, bundle, tlsconfig.AuthorizeID(ctlID))
		conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(credentials.NewTLS(tc)),
			grpc.WithKeepaliveParams(keepalive.ClientParameters{Time: time.Minute, Timeout: 20 * time.Second}))
		if err != nil {
			return nil, fmt.Errorf("scale: %w", err)
		}
		proxies = append(proxies, &proxy{idx: i, ns: namespace(app), pod: podName(i), conn: conn})
	}
	first := newRound(f.gen, cfg.Proxies)
	f.round.Store(first)
	proxyCtx, stopProxies := context.WithCancel(context.Background())
	var proxyWG sync.WaitGroup
	for _, p := range proxies {
		proxyWG.Go(func() { f.run(proxyCtx, p) })
	}
	f.stops = append(f.stops, func() {
		stopProxies()
		proxyWG.Wait()
	})
	if err := f.wait(ctx, first, setupTimeout); err != nil {
		return nil, fmt.Errorf("scale: connecting the proxies: %w", err)
	}
	f.Setup.Connect = time.Since(first.start)
	if err := f.checkEnforced(f.gen); err != nil {
		return nil, err
	}
	f.Setup.Memory = f.Memory()
	return f, nil
}

// Push changes the root policy, which applies to every pod, and waits for
// every proxy to acknowledge the recompiled policy, then checks that the
// server counts every proxy enforcing it. Not safe for concurrent use.
func (f *Fixture) Push(ctx context.Context) (Push, error) {
	f.gen++
	r := newRound(f.gen, f.Config.Proxies)
	f.round.Store(r)
	if err := f.policies.setRoot(rootAt(f.gen)); err != nil {
		return Push{}, err
	}
	if err := f.wait(ctx, r, pushTimeout); err != nil {
		return Push{}, err
	}
	if err := f.checkEnforced(f.gen); err != nil {
		return Push{}, err
	}
	return Push{Last: slices.Max(r.took), Acks: r.took}, nil
}

// Memory measures the process's heap and goroutines now, by side.
func (f *Fixture) Memory() Memory {
	heap, gor := heapInUse()
	return Memory{HeapInUse: heap, Goroutines: gor, ByHeap: heapBySide(), ByGoroutines: goroutinesBySide()}
}

// Close stops the proxies, the server and the informers, and waits for
// their goroutines. It may be called more than once.
func (f *Fixture) Close() {
	f.closeOnce.Do(func() {
		for i := len(f.stops) - 1; i >= 0; i-- {
			f.stops[i]()
		}
		runtime.MemProfileRate = f.rate
	})
}

// Percentile is the nearest-rank p-th percentile (0 < p <= 1) of sorted,
// which is not empty: over fewer than 100 values, p99 is the largest.
func Percentile(sorted []time.Duration, p float64) time.Duration {
	i := int(math.Ceil(float64(len(sorted))*p)) - 1
	return sorted[max(0, min(i, len(sorted)-1))]
}
