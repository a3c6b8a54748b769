package controlplane_test

// The controller at scale (issue 10): one controller, 10,000 meshed pods,
// 1,000 simulated proxies each on its own mutual-TLS connection, and the
// time from a mesh-wide AuthorizationPolicy change to the last proxy's
// acknowledgement. It is a benchmark, not a timed test: it reports, and
// fails only when acknowledgements do not arrive at all.
//
// The cluster is client-go's fake clientset and the policies a fake
// watch: this measures the controller's own code (inventory, compiler,
// streams, acks), not an API server. The gRPC server, its TLS and the
// proxies' SVIDs are real.

import (
	"bytes"
	"context"
	"fmt"
	"math"
	"net"
	"net/netip"
	"runtime"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	kruntime "k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/client-go/tools/cache"

	"github.com/mesh-dev/mesh/authz"
	"github.com/mesh-dev/mesh/authz/api/v1alpha1"
	"github.com/mesh-dev/mesh/controlplane"
	controlplanev1 "github.com/mesh-dev/mesh/controlplane/api/v1"
	"github.com/mesh-dev/mesh/controlplane/inventory"
	"github.com/mesh-dev/mesh/identity"
	"github.com/mesh-dev/mesh/internal/testpki"
)

// The simulated cluster. Pod i belongs to app i%scaleApps, and app a
// lives in namespace a%scaleNamespaces with ServiceAccount = app name, so
// every app has scalePods/scaleApps pods and the first scaleProxies pods
// (those that stream) are spread evenly over every app and namespace.
const (
	scaleNamespaces = 10
	scaleApps       = 100
	scalePods       = 10_000
	scaleProxies    = 1_000

	// scaleRootPolicy is the root-namespace policy each iteration changes:
	// it applies to every pod.
	scaleRootPolicy = "bench-root"
	// scaleAppPort is every app container's port, named "http".
	scaleAppPort = 8080

	// scaleSetupTimeout bounds the informers' sync and the proxies'
	// first policy; scaleIterTimeout one push to every proxy.
	scaleSetupTimeout = 3 * time.Minute
	scaleIterTimeout  = 30 * time.Second
)

var scaleTD = spiffeid.RequireTrustDomainFromString("cluster.local")

func scaleNamespace(app int) string { return fmt.Sprintf("team-%d", app%scaleNamespaces) }
func scaleAppName(app int) string   { return fmt.Sprintf("app-%02d", app) }
func scalePodName(i int) string {
	return fmt.Sprintf("%s-%04d", scaleAppName(i%scaleApps), i/scaleApps)
}

// scalePodIP is pod i's address: 198.18.0.1 onwards.
func scalePodIP(i int) string {
	n := i + 1
	return netip.AddrFrom4([4]byte{198, 18, byte(n >> 8), byte(n)}).String()
}

// scaleServiceIP is app a's ClusterIP, in 198.18.200.0/24, clear of the
// pods' 198.18.0.1-198.18.39.16.
func scaleServiceIP(app int) string {
	return netip.AddrFrom4([4]byte{198, 18, 200, byte(app + 1)}).String()
}

// scaleObjects is the cluster: namespaces, pods, one Service and one
// EndpointSlice per app.
func scaleObjects() []kruntime.Object {
	objs := []kruntime.Object{&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: authz.RootNamespace}}}
	for n := range scaleNamespaces {
		objs = append(objs, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: scaleNamespace(n)}})
	}
	endpoints := make([][]discoveryv1.Endpoint, scaleApps)
	ready := true
	for i := range scalePods {
		app := i % scaleApps
		ns, name, ip := scaleNamespace(app), scalePodName(i), scalePodIP(i)
		objs = append(objs, &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: map[string]string{"app": scaleAppName(app)}},
			Spec: corev1.PodSpec{
				NodeName:           fmt.Sprintf("node-%d", i%50),
				ServiceAccountName: scaleAppName(app),
				InitContainers:     []corev1.Container{{Name: inventory.ProxyContainer, Image: "mesh-proxy"}},
				Containers: []corev1.Container{{Name: "app", Image: "app", Ports: []corev1.ContainerPort{
					{Name: "http", ContainerPort: scaleAppPort, Protocol: corev1.ProtocolTCP},
				}}},
			},
			Status: corev1.PodStatus{Phase: corev1.PodRunning, PodIP: ip, PodIPs: []corev1.PodIP{{IP: ip}}},
		})
		endpoints[app] = append(endpoints[app], discoveryv1.Endpoint{
			Addresses:  []string{ip},
			Conditions: discoveryv1.EndpointConditions{Ready: &ready},
			TargetRef:  &corev1.ObjectReference{Kind: "Pod", Namespace: ns, Name: name},
		})
	}
	portName, port := "http", int32(scaleAppPort)
	for app := range scaleApps {
		ns, name := scaleNamespace(app), scaleAppName(app)
		objs = append(objs,
			&corev1.Service{
				ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
				Spec: corev1.ServiceSpec{
					ClusterIP: scaleServiceIP(app), ClusterIPs: []string{scaleServiceIP(app)},
					Selector: map[string]string{"app": name},
					Ports:    []corev1.ServicePort{{Name: portName, Port: 80, TargetPort: intstr.FromString(portName), Protocol: corev1.ProtocolTCP}},
				},
			},
			&discoveryv1.EndpointSlice{
				ObjectMeta:  metav1.ObjectMeta{Namespace: ns, Name: name + "-1", Labels: map[string]string{discoveryv1.LabelServiceName: name}},
				AddressType: discoveryv1.AddressTypeIPv4,
				Ports:       []discoveryv1.EndpointPort{{Name: &portName, Port: &port}},
				Endpoints:   endpoints[app],
			})
	}
	return objs
}

// scaleRoot is the root policy at generation gen: every namespace's
// workloads may call the http port, on a path that names the generation
// (so each generation compiles to a different policy).
func scaleRoot(gen int64) *v1alpha1.AuthorizationPolicy {
	var namespaces []string
	for n := range scaleNamespaces {
		namespaces = append(namespaces, scaleNamespace(n))
	}
	return &v1alpha1.AuthorizationPolicy{
		ObjectMeta: metav1.ObjectMeta{
			Namespace: authz.RootNamespace, Name: scaleRootPolicy, Generation: gen,
			ResourceVersion: strconv.FormatInt(1000+gen, 10),
		},
		Spec: v1alpha1.AuthorizationPolicySpec{Action: v1alpha1.Allow, Rules: []v1alpha1.Rule{{
			From: []v1alpha1.Source{{Namespaces: namespaces}},
			To: []v1alpha1.Operation{{
				Ports: []intstr.IntOrString{intstr.FromString("http")},
				Paths: []string{fmt.Sprintf("/api/v%d/*", gen)},
			}},
		}}},
	}
}

// scaleAppPolicies is one ALLOW policy per app, selecting its pods by
// label: the next app's ServiceAccount may GET its port.
func scaleAppPolicies() []v1alpha1.AuthorizationPolicy {
	var out []v1alpha1.AuthorizationPolicy
	for app := range scaleApps {
		out = append(out, v1alpha1.AuthorizationPolicy{
			ObjectMeta: metav1.ObjectMeta{Namespace: scaleNamespace(app), Name: scaleAppName(app) + "-callers", Generation: 1, ResourceVersion: "1"},
			Spec: v1alpha1.AuthorizationPolicySpec{
				Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": scaleAppName(app)}},
				Action:   v1alpha1.Allow,
				Rules: []v1alpha1.Rule{{
					From: []v1alpha1.Source{{ServiceAccounts: []string{scaleAppName((app + 1) % scaleApps)}}},
					To:   []v1alpha1.Operation{{Ports: []intstr.IntOrString{intstr.FromInt32(scaleAppPort)}, Methods: []string{"GET"}}},
				}},
			},
		})
	}
	return out
}

// scalePolicySource is the policies' ListWatch: the app policies and the
// root policy as it is now, and a fake watch through which the benchmark
// modifies the root policy.
type scalePolicySource struct {
	mu      sync.Mutex
	root    *v1alpha1.AuthorizationPolicy
	apps    []v1alpha1.AuthorizationPolicy
	watcher *watch.RaceFreeFakeWatcher // the reflector's current watch
}

func (s *scalePolicySource) listWatch() cache.ListerWatcher {
	return scaleListWatch{&cache.ListWatch{
		ListWithContextFunc: func(context.Context, metav1.ListOptions) (kruntime.Object, error) {
			s.mu.Lock()
			defer s.mu.Unlock()
			l := &v1alpha1.AuthorizationPolicyList{ListMeta: metav1.ListMeta{ResourceVersion: s.root.ResourceVersion}}
			l.Items = append(slices.Clone(s.apps), *s.root.DeepCopy())
			return l, nil
		},
		WatchFuncWithContext: func(context.Context, metav1.ListOptions) (watch.Interface, error) {
			s.mu.Lock()
			defer s.mu.Unlock()
			// A new watch each time: a reflector that restarts its watch
			// lists again first, so it sees every change either way.
			s.watcher = watch.NewRaceFreeFake()
			return s.watcher, nil
		},
	}}
}

// scaleListWatch tells the reflector that the fake watch does not do
// client-go's streaming list (the WatchListClient feature): it lists, then
// watches.
type scaleListWatch struct{ *cache.ListWatch }

func (scaleListWatch) IsWatchListSemanticsUnSupported() bool { return true }

// setRoot makes p the root policy and sends it to the current watch.
func (s *scalePolicySource) setRoot(p *v1alpha1.AuthorizationPolicy) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.root = p
	if s.watcher == nil {
		return fmt.Errorf("scale: the policy informer has no watch open")
	}
	s.watcher.Modify(p.DeepCopy())
	return nil
}

// scaleRound is one push being measured: the root policy's generation
// that every proxy must acknowledge, and each proxy's time to its ack.
type scaleRound struct {
	gen   int64
	start time.Time
	took  []time.Duration // by proxy; each written by its proxy only
	acks  atomic.Int32
	done  chan struct{} // closed at the scaleProxies-th ack
}

func newScaleRound(gen int64) *scaleRound {
	return &scaleRound{gen: gen, start: time.Now(), took: make([]time.Duration, scaleProxies), done: make(chan struct{})}
}

// scaleProxy is one simulated proxy: its pod and its own connection,
// which presents an SVID of the pod's ServiceAccount.
type scaleProxy struct {
	idx     int
	ns, pod string
	conn    *grpc.ClientConn
	lastGen int64 // the root generation last counted; its goroutine's own
}

// scaleFixture is the running controller and its proxies.
type scaleFixture struct {
	srv      *controlplane.Server
	policies *scalePolicySource
	round    atomic.Pointer[scaleRound]

	failOnce sync.Once
	failed   chan struct{} // closed at a proxy's first error
	failErr  error
}

func (f *scaleFixture) fail(err error) {
	f.failOnce.Do(func() {
		f.failErr = err
		close(f.failed)
	})
}

// run is a proxy's policy watch, as the real client does it: receive a
// policy, enforce it (nothing to do here), acknowledge its version.
func (f *scaleFixture) run(ctx context.Context, p *scaleProxy) {
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
		gen := scaleRootGeneration(pol)
		r := f.round.Load()
		if r == nil || gen != r.gen || p.lastGen == gen {
			continue
		}
		p.lastGen = gen
		r.took[p.idx] = time.Since(r.start)
		if r.acks.Add(1) == scaleProxies {
			close(r.done)
		}
	}
}

// scaleRootGeneration is the generation of the root policy that pol applies,
// or 0.
func scaleRootGeneration(pol *controlplanev1.Policy) int64 {
	for _, r := range pol.GetApplied() {
		if r.GetNamespace() == authz.RootNamespace && r.GetName() == scaleRootPolicy {
			return r.GetGeneration()
		}
	}
	return 0
}

// wait waits for r's last ack, a proxy's failure or timeout.
func (f *scaleFixture) wait(r *scaleRound, timeout time.Duration) error {
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-r.done:
		return nil
	case <-f.failed:
		return f.failErr
	case <-t.C:
		return fmt.Errorf("scale: %d of %d proxies acknowledged root policy generation %d within %v", r.acks.Load(), scaleProxies, r.gen, timeout)
	}
}

// checkEnforced checks the server's own count: every proxy enforces
// generation gen of the root policy, none an older one.
func (f *scaleFixture) checkEnforced(gen int64) error {
	counts := f.srv.Enforcement()[authz.RootNamespace+"/"+scaleRootPolicy]
	if counts[gen] != scaleProxies || len(counts) != 1 {
		return fmt.Errorf("scale: the server counts root policy enforcement %v, want %d at generation %d only", counts, scaleProxies, gen)
	}
	return nil
}

// scaleHeapInUse is the heap in use after a full collection, and the
// goroutines.
func scaleHeapInUse() (uint64, int) {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapInuse, runtime.NumGoroutine()
}

// The controller and the proxies share this process; which side an
// allocation or a goroutine belongs to is read from its stack. A frame of
// the proxies' side is looked for first: their gRPC client calls through
// nothing of the server's.
var (
	scaleProxySide = []string{
		"google.golang.org/grpc/internal/transport.(*http2Client)", "google.golang.org/grpc/internal/transport.NewHTTP2Client",
		"google.golang.org/grpc.(*ClientConn)", "google.golang.org/grpc.NewClient", "google.golang.org/grpc.newClientStream",
		"google.golang.org/grpc.(*clientStream)", "google.golang.org/grpc.(*addrConn)", "google.golang.org/grpc.invoke",
		// Each ClientConn's resolver, balancer and picker callbacks.
		"google.golang.org/grpc/internal/grpcsync.(*CallbackSerializer)",
		"github.com/mesh-dev/mesh/controlplane_test.(*scaleFixture)",
	}
	scaleControllerSide = []string{
		"google.golang.org/grpc/internal/transport.(*http2Server)", "google.golang.org/grpc/internal/transport.NewServerTransport",
		"google.golang.org/grpc.(*Server)", "github.com/mesh-dev/mesh/controlplane.", "github.com/mesh-dev/mesh/controlplane/inventory.",
		"k8s.io/client-go/tools/cache.", "k8s.io/client-go/informers.",
	}
)

// scaleSide is "proxies", "controller" or "" (the fake API server, the
// test's own setup) for a stack of function names.
func scaleSide(funcs []string) string {
	for _, set := range []struct {
		name    string
		markers []string
	}{{"proxies", scaleProxySide}, {"controller", scaleControllerSide}} {
		for _, fn := range funcs {
			for _, m := range set.markers {
				if strings.HasPrefix(fn, m) {
					return set.name
				}
			}
		}
	}
	return ""
}

// scaleHeapBySide estimates, from the heap profile after a full
// collection, the live bytes allocated by each side, scaled for sampling
// as pprof does.
func scaleHeapBySide() map[string]float64 {
	runtime.GC()
	runtime.GC()
	var recs []runtime.MemProfileRecord
	for n := 1024; ; n *= 2 {
		recs = make([]runtime.MemProfileRecord, n)
		if got, ok := runtime.MemProfile(recs, false); ok {
			recs = recs[:got]
			break
		}
	}
	rate := float64(runtime.MemProfileRate)
	out := map[string]float64{}
	for _, r := range recs {
		if r.InUseBytes() == 0 || r.AllocObjects == 0 {
			continue
		}
		avg := float64(r.AllocBytes) / float64(r.AllocObjects)
		scale := 1 / (1 - math.Exp(-avg/rate))
		var funcs []string
		frames := runtime.CallersFrames(r.Stack())
		for {
			fr, more := frames.Next()
			funcs = append(funcs, fr.Function)
			if !more {
				break
			}
		}
		out[scaleSide(funcs)] += float64(r.InUseBytes()) * scale
	}
	return out
}

// scaleGoroutinesBySide counts the goroutines of each side from their
// stacks.
func scaleGoroutinesBySide() map[string]int {
	var buf bytes.Buffer
	if err := pprof.Lookup("goroutine").WriteTo(&buf, 1); err != nil {
		return nil
	}
	out := map[string]int{}
	// Groups of identical stacks: a line "N @ pcs", then a line
	// "#<tab>pc<tab>function+offset<tab>file:line" per frame.
	for _, group := range strings.Split(buf.String(), "\n\n") {
		lines := strings.Split(group, "\n")
		if strings.HasPrefix(lines[0], "goroutine profile:") {
			lines = lines[1:] // the header, before the first group
		}
		var n int
		if len(lines) == 0 {
			continue
		}
		if _, err := fmt.Sscanf(lines[0], "%d @", &n); err != nil {
			continue
		}
		var funcs []string
		for _, l := range lines[1:] {
			if f := strings.Fields(l); len(f) >= 3 && f[0] == "#" {
				funcs = append(funcs, f[2])
			}
		}
		out[scaleSide(funcs)] += n
	}
	return out
}

func scaleMiB(n uint64) float64 { return float64(n) / (1 << 20) }

// scalePercentile is the nearest-rank p-th percentile (0 < p <= 1) of sorted.
func scalePercentile(sorted []time.Duration, p float64) time.Duration {
	i := int(math.Ceil(float64(len(sorted))*p)) - 1
	return sorted[max(0, min(i, len(sorted)-1))]
}

func scaleMs(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

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
	defer func(rate int) { runtime.MemProfileRate = rate }(runtime.MemProfileRate)
	runtime.MemProfileRate = 64 << 10
	heap0, _ := scaleHeapInUse()

	// The cluster.
	kube := fake.NewClientset(scaleObjects()...)
	heap1, _ := scaleHeapInUse()
	src := &scalePolicySource{root: scaleRoot(1), apps: scaleAppPolicies()}
	factory := informers.NewSharedInformerFactory(kube, 0)
	policyInf := cache.NewSharedIndexInformer(src.listWatch(), &v1alpha1.AuthorizationPolicy{}, 0,
		cache.Indexers{cache.NamespaceIndex: cache.MetaNamespaceIndexFunc})
	inv, err := inventory.New(inventory.Config{TrustDomain: scaleTD, Informers: factory, Policies: policyInf})
	if err != nil {
		b.Fatal(err)
	}
	pki := testpki.New(b, scaleTD.Name())
	srv, err := controlplane.New(controlplane.Config{Inventory: inv, Bundle: pki.CA, TrustDomain: scaleTD, AllowAnyAddress: true})
	if err != nil {
		b.Fatal(err)
	}
	f := &scaleFixture{srv: srv, policies: src, failed: make(chan struct{})}

	syncStart := time.Now()
	infCtx, stopInformers := context.WithCancel(context.Background())
	var infWG sync.WaitGroup
	infWG.Go(func() { policyInf.RunWithContext(infCtx) })
	factory.Start(infCtx.Done())
	b.Cleanup(func() {
		stopInformers()
		factory.Shutdown()
		infWG.Wait()
	})
	syncCtx, cancelSync := context.WithTimeout(infCtx, scaleSetupTimeout)
	synced := cache.WaitForCacheSync(syncCtx.Done(), inv.HasSynced)
	cancelSync()
	if !synced {
		b.Fatalf("scale: the informers did not sync within %v", scaleSetupTimeout)
	}
	syncTook := time.Since(syncStart)

	// The controller's gRPC server, as mesh-controller builds it.
	ctlID := spiffeid.RequireFromPath(scaleTD, "/ns/"+authz.RootNamespace+"/sa/mesh-controller")
	ctl := pki.Source(b, ctlID.String())
	gopts, err := identity.ServerOptions(identity.TransportConfig{})
	if err != nil {
		b.Fatal(err)
	}
	gs := grpc.NewServer(append(gopts, grpc.Creds(credentials.NewTLS(controlplane.ServerTLS(ctl, ctl))))...)
	srv.Register(gs)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	var serveWG sync.WaitGroup
	serveWG.Go(func() { _ = gs.Serve(lis) })
	b.Cleanup(func() {
		gs.Stop()
		serveWG.Wait()
	})
	heap2, gor2 := scaleHeapInUse()

	// The proxies: each its own SVID and connection, as a real proxy.
	proxies := make([]*scaleProxy, scaleProxies)
	bundle := pki.Bundle()
	for i := range proxies {
		app := i % scaleApps
		id, err := identity.ForServiceAccount(scaleTD, scaleNamespace(app), scaleAppName(app))
		if err != nil {
			b.Fatal(err)
		}
		tc := tlsconfig.MTLSClientConfig(pki.SVID(b, id.String()), bundle, tlsconfig.AuthorizeID(ctlID))
		conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(credentials.NewTLS(tc)),
			grpc.WithKeepaliveParams(keepalive.ClientParameters{Time: time.Minute, Timeout: 20 * time.Second}))
		if err != nil {
			b.Fatal(err)
		}
		proxies[i] = &scaleProxy{idx: i, ns: scaleNamespace(app), pod: scalePodName(i), conn: conn}
	}
	gen := int64(1)
	first := newScaleRound(gen)
	f.round.Store(first)
	proxyCtx, stopProxies := context.WithCancel(context.Background())
	var proxyWG sync.WaitGroup
	for _, p := range proxies {
		proxyWG.Go(func() { f.run(proxyCtx, p) })
	}
	b.Cleanup(func() {
		stopProxies()
		proxyWG.Wait()
		for _, p := range proxies {
			_ = p.conn.Close()
		}
	})
	if err := f.wait(first, scaleSetupTimeout); err != nil {
		b.Fatalf("scale: connecting the proxies: %v", err)
	}
	connectTook := time.Since(first.start)
	if err := f.checkEnforced(gen); err != nil {
		b.Fatal(err)
	}
	heap3, gor3 := scaleHeapInUse()
	heapSides, goroutineSides := scaleHeapBySide(), scaleGoroutinesBySide()

	var lastAcks, acks []time.Duration
	for b.Loop() {
		gen++
		r := newScaleRound(gen)
		f.round.Store(r)
		if err := src.setRoot(scaleRoot(gen)); err != nil {
			b.Fatal(err)
		}
		if err := f.wait(r, scaleIterTimeout); err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		if err := f.checkEnforced(gen); err != nil {
			b.Fatal(err)
		}
		lastAcks = append(lastAcks, slices.Max(r.took))
		acks = append(acks, r.took...)
		b.StartTimer()
	}
	slices.Sort(lastAcks)
	slices.Sort(acks)
	b.ReportMetric(scaleMs(scalePercentile(lastAcks, 0.50)), "last-ack-p50-ms")
	b.ReportMetric(scaleMs(scalePercentile(lastAcks, 0.99)), "last-ack-p99-ms")
	b.ReportMetric(scaleMs(scalePercentile(acks, 0.50)), "ack-p50-ms")
	b.ReportMetric(scaleMs(scalePercentile(acks, 0.99)), "ack-p99-ms")
	b.ReportMetric(scaleMiB(heap3), "heap-MiB")
	b.ReportMetric(heapSides["controller"]/(1<<20), "ctl-heap-MiB")
	b.ReportMetric(heapSides["proxies"]/(1<<20), "proxies-heap-MiB")
	b.ReportMetric(float64(gor3), "goroutines")
	b.ReportMetric(float64(goroutineSides["controller"]), "ctl-goroutines")
	b.ReportMetric(syncTook.Seconds(), "sync-s")
	b.ReportMetric(connectTook.Seconds(), "connect-s")
	b.Logf("heap in use: %.1f MiB at start, %.1f MiB with the fake API's %d pods, %.1f MiB synced, %.1f MiB with %d streams (%d goroutines, %d more than before the streams); "+
		"live by the heap profile: controller %.1f MiB, proxies %.1f MiB, rest (fake API, setup) %.1f MiB; goroutines: controller %d, proxies %d, rest %d",
		scaleMiB(heap0), scaleMiB(heap1), scalePods, scaleMiB(heap2), scaleMiB(heap3), scaleProxies, gor3, gor3-gor2,
		heapSides["controller"]/(1<<20), heapSides["proxies"]/(1<<20), heapSides[""]/(1<<20),
		goroutineSides["controller"], goroutineSides["proxies"], goroutineSides[""])
}
