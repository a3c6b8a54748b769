package trustbundle

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/time/rate"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/workqueue"
)

// ConfigMapName is the name of the ConfigMap in each namespace.
const ConfigMapName = "mesh-trust-bundle"

// Key is the ConfigMap's only key: every root of the bundle, PEM, in the
// CA's order.
const Key = "ca-bundle.pem"

// The label the Publisher puts on its ConfigMaps. A namespace whose
// ConfigMap carries it keeps getting the current bundle.
const (
	ManagedByLabel = "app.kubernetes.io/managed-by"
	ManagedBy      = "mesh-controller"
)

// InjectLabel, set to InjectEnabled on a namespace, asks for mesh's proxy
// in its pods; such a namespace gets the ConfigMap before its first pod.
const (
	InjectLabel   = "mesh.dev/inject"
	InjectEnabled = "enabled"
)

// workers is how many namespaces are written at once: enough that a bundle
// change reaches a thousand namespaces in seconds, few enough not to crowd
// the client's own rate limit.
const workers = 4

// Source is the trust bundle to publish.
type Source interface {
	// Bundle returns every root, in the order to publish them.
	Bundle() []*x509.Certificate
	// Updated returns a channel closed (and replaced) at the next change.
	Updated() <-chan struct{}
}

// Config configures a Publisher.
type Config struct {
	// Kube writes the ConfigMaps. Required.
	Kube kubernetes.Interface
	// Informers provides the pods, namespaces and ConfigMaps the Publisher
	// reads. New registers those informers; the caller starts the factory,
	// on every replica. Required.
	Informers informers.SharedInformerFactory
	// ConfigMapInformers, when set, provides the ConfigMaps instead: a
	// factory whose lists select metadata.name=ConfigMapName, so that the
	// controller caches no other ConfigMap and RBAC grants it list and
	// watch of that name alone. Zero means Informers.
	ConfigMapInformers informers.SharedInformerFactory
	// Bundle is the trust bundle to publish. Required.
	Bundle Source
	// Namespaces always get the ConfigMap, meshed pods or not (the
	// controller's own namespace). Each must be a namespace name. Zero: none.
	Namespaces []string
	// Logger. Zero means slog.Default().
	Logger *slog.Logger
	// Registerer receives the Publisher's metrics. Zero: not registered.
	Registerer prometheus.Registerer
}

// Publisher keeps the mesh-trust-bundle ConfigMaps current.
type Publisher struct {
	cfg     Config
	log     *slog.Logger
	metrics *metrics

	pods       cache.SharedIndexInformer
	namespaces cache.SharedIndexInformer
	configMaps cache.SharedIndexInformer
	podLister  corelisters.PodLister
	nsLister   corelisters.NamespaceLister
	cmLister   corelisters.ConfigMapLister

	running atomic.Bool
}

// New checks cfg and registers the pod, namespace and ConfigMap informers
// with cfg.Informers. It writes nothing: that is Run's work.
func New(cfg Config) (*Publisher, error) {
	switch {
	case cfg.Kube == nil:
		return nil, errors.New("trustbundle: Config.Kube is required")
	case cfg.Informers == nil:
		return nil, errors.New("trustbundle: Config.Informers is required")
	case cfg.Bundle == nil:
		return nil, errors.New("trustbundle: Config.Bundle is required")
	}
	for _, ns := range cfg.Namespaces {
		if errs := validation.IsDNS1123Label(ns); len(errs) > 0 {
			return nil, fmt.Errorf("trustbundle: Config.Namespaces: %q is not a namespace name: %s", ns, errs[0])
		}
	}
	cfg.Namespaces = slices.Clone(cfg.Namespaces)
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	m, err := newMetrics(cfg.Registerer)
	if err != nil {
		return nil, err
	}
	core := cfg.Informers.Core().V1()
	cms := core.ConfigMaps()
	if cfg.ConfigMapInformers != nil {
		cms = cfg.ConfigMapInformers.Core().V1().ConfigMaps()
	}
	p := &Publisher{
		cfg:       cfg,
		log:       cfg.Logger,
		metrics:   m,
		podLister: core.Pods().Lister(),
		nsLister:  core.Namespaces().Lister(),
		cmLister:  cms.Lister(),
	}
	// Asking for the informers is what makes the factory start them.
	p.pods, p.namespaces, p.configMaps = core.Pods().Informer(), core.Namespaces().Informer(), cms.Informer()
	return p, nil
}

// Run writes the ConfigMaps until ctx ends, then returns nil. It waits for
// the informers' caches first, so it blocks until the caller starts the
// factory. Every Run starts by checking every namespace, so a replica that
// becomes leader repairs what changed while it was not. Run may be called
// again after it returned, but not twice at once.
func (p *Publisher) Run(ctx context.Context) error {
	if !p.running.CompareAndSwap(false, true) {
		return errors.New("trustbundle: Run is already running")
	}
	defer p.running.Store(false)

	queue := workqueue.NewTypedRateLimitingQueueWithConfig(rateLimiter(), workqueue.TypedRateLimitingQueueConfig[string]{Name: "mesh_trust_bundle"})
	defer queue.ShutDown()
	// Taken before the handlers replay the caches: any change after this
	// point closes it, and the replay covers every change before.
	updated := p.cfg.Bundle.Updated()

	regs, err := p.register(queue)
	defer p.unregister(regs)
	if err != nil {
		return err
	}
	synced := make([]cache.InformerSynced, 0, len(regs))
	for _, r := range regs {
		synced = append(synced, r.reg.HasSynced)
	}
	if !cache.WaitForCacheSync(ctx.Done(), synced...) {
		return nil // ctx ended first
	}
	for _, ns := range p.cfg.Namespaces {
		queue.Add(ns)
	}

	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for p.next(ctx, queue) {
			}
		})
	}
	wg.Go(func() { p.watchBundle(ctx, queue, updated) })
	<-ctx.Done()
	queue.ShutDown()
	wg.Wait()
	return nil
}

// rateLimiter spaces a namespace's retries (50ms doubling to a minute: a
// stale bundle must not wait long) and all retries together.
func rateLimiter() workqueue.TypedRateLimiter[string] {
	return workqueue.NewTypedMaxOfRateLimiter(
		workqueue.NewTypedItemExponentialFailureRateLimiter[string](50*time.Millisecond, time.Minute),
		&workqueue.TypedBucketRateLimiter[string]{Limiter: rate.NewLimiter(rate.Limit(10), 100)},
	)
}

// next syncs one namespace from the queue; false once the queue is shut
// down.
func (p *Publisher) next(ctx context.Context, queue workqueue.TypedRateLimitingInterface[string]) bool {
	ns, shutdown := queue.Get()
	if shutdown {
		return false
	}
	defer queue.Done(ns)
	if err := p.sync(ctx, ns); err != nil {
		if ctx.Err() == nil {
			queue.AddRateLimited(ns)
		}
		return true
	}
	queue.Forget(ns)
	return true
}

// watchBundle queues every namespace that should have the ConfigMap each
// time the bundle changes.
func (p *Publisher) watchBundle(ctx context.Context, queue workqueue.TypedInterface[string], updated <-chan struct{}) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-updated:
		}
		updated = p.cfg.Bundle.Updated()
		namespaces, err := p.nsLister.List(everything)
		if err != nil {
			// A lister reads memory and only fails on a bad selector.
			p.log.Error("trustbundle: list namespaces after a bundle change", "err", err)
			continue
		}
		for _, ns := range namespaces {
			if p.wanted(ns) {
				queue.Add(ns.Name)
			}
		}
	}
}
