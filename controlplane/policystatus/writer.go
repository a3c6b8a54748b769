package policystatus

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/time/rate"
	corev1 "k8s.io/api/core/v1"
	apiequality "k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/client-go/informers"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/workqueue"

	"github.com/mesh-dev/mesh/authz"
	"github.com/mesh-dev/mesh/authz/api/v1alpha1"
	"github.com/mesh-dev/mesh/authz/api/v1alpha1/policyclient"
	authzvalidation "github.com/mesh-dev/mesh/authz/validation"
	"github.com/mesh-dev/mesh/controlplane/inventory"
)

// workers is how many policies are reconciled at once; the write rate is
// bounded apart from it, by WriterConfig.MaxWritesPerSecond.
const workers = 4

// WriterConfig configures a Writer.
type WriterConfig struct {
	// Policies writes the status. Required.
	Policies *policyclient.Client
	// PolicyInformer is every namespace's policies, indexed by namespace
	// (policyclient.NewInformer); the index is added when it is missing. The
	// caller runs it. Required.
	PolicyInformer cache.SharedIndexInformer
	// Informers provides the pods (of every namespace) and the report
	// ConfigMaps (of Namespace). NewWriter registers those informers; the
	// caller starts the factory. Required.
	Informers informers.SharedInformerFactory
	// ReportInformers, when set, provides the report ConfigMaps instead:
	// a factory limited to Namespace, so that the controller caches no
	// other namespace's ConfigMaps and RBAC grants it list and watch in
	// Namespace alone. Zero means Informers.
	ReportInformers informers.SharedInformerFactory
	// Namespace is the controller's, where the replicas' reports are.
	// Required.
	Namespace string
	// StaleAfter: a report written longer ago (or dated further ahead, by
	// a clock that is wrong) is ignored, so a replica that died without
	// deleting its report stops counting. It must be well above the
	// Reporters' Heartbeat, and replicas' clocks must agree to well
	// within it. Zero: 30s.
	StaleAfter time.Duration
	// MaxWritesPerSecond bounds the status writes, all policies together.
	// Zero: 20.
	MaxWritesPerSecond float64
	// Logger. Zero: slog.Default().
	Logger *slog.Logger
	// Registerer receives the Writer's metrics. Zero: not registered.
	Registerer prometheus.Registerer
}

// Writer keeps every AuthorizationPolicy's status current. Only the
// leader runs one; every replica may construct one.
type Writer struct {
	cfg     WriterConfig
	log     *slog.Logger
	metrics *metrics

	pods       cache.SharedIndexInformer
	configMaps cache.SharedIndexInformer
	podLister  corelisters.PodLister
	reportSel  labels.Selector

	running atomic.Bool
}

// NewWriter checks cfg and registers the pod and ConfigMap informers with
// cfg.Informers. It writes nothing: that is Run's work.
func NewWriter(cfg WriterConfig) (*Writer, error) {
	switch {
	case cfg.Policies == nil:
		return nil, errors.New("policystatus: WriterConfig.Policies is required")
	case cfg.PolicyInformer == nil:
		return nil, errors.New("policystatus: WriterConfig.PolicyInformer is required")
	case cfg.Informers == nil:
		return nil, errors.New("policystatus: WriterConfig.Informers is required")
	case cfg.StaleAfter < 0:
		return nil, fmt.Errorf("policystatus: WriterConfig.StaleAfter %s is negative", cfg.StaleAfter)
	case cfg.MaxWritesPerSecond < 0 || math.IsNaN(cfg.MaxWritesPerSecond) || math.IsInf(cfg.MaxWritesPerSecond, 0):
		return nil, fmt.Errorf("policystatus: WriterConfig.MaxWritesPerSecond %v is not a positive rate", cfg.MaxWritesPerSecond)
	}
	if e := validation.IsDNS1123Label(cfg.Namespace); len(e) > 0 {
		return nil, fmt.Errorf("policystatus: WriterConfig.Namespace %q: %s", cfg.Namespace, e[0])
	}
	if _, ok := cfg.PolicyInformer.GetIndexer().GetIndexers()[cache.NamespaceIndex]; !ok {
		err := cfg.PolicyInformer.AddIndexers(cache.Indexers{cache.NamespaceIndex: cache.MetaNamespaceIndexFunc})
		if err != nil {
			return nil, fmt.Errorf("policystatus: WriterConfig.PolicyInformer has no namespace index and cannot get one: %w", err)
		}
	}
	if cfg.StaleAfter == 0 {
		cfg.StaleAfter = 30 * time.Second
	}
	if cfg.MaxWritesPerSecond == 0 {
		cfg.MaxWritesPerSecond = 20
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	m, err := newMetrics(cfg.Registerer)
	if err != nil {
		return nil, err
	}
	core := cfg.Informers.Core().V1()
	w := &Writer{
		cfg:       cfg,
		log:       cfg.Logger,
		metrics:   m,
		podLister: core.Pods().Lister(),
		reportSel: labels.SelectorFromSet(labels.Set{ReportLabel: "true"}),
	}
	// Asking for the informers is what makes the factory start them.
	cms := core.ConfigMaps()
	if cfg.ReportInformers != nil {
		cms = cfg.ReportInformers.Core().V1().ConfigMaps()
	}
	w.pods, w.configMaps = core.Pods().Informer(), cms.Informer()
	return w, nil
}

// item is one piece of queued work: a policy to reconcile, or a report
// whose freshness to check when it may have gone stale.
type item struct {
	report bool
	key    string // "namespace/name" of a policy; a report's ConfigMap name
}

// run is the state of one Run: its queue and the reports it has read.
type run struct {
	*Writer
	queue   workqueue.TypedRateLimitingInterface[item]
	limiter *rate.Limiter

	mu      sync.RWMutex
	reports map[string]*Report // by ConfigMap name; nil: unreadable
}

// Run reconciles every policy, then each policy affected by a change of
// itself, a pod or a report, until ctx ends; then it returns nil. It
// waits for the informers' caches first, so it blocks until the caller
// starts the factory and the policy informer. Every Run starts from
// scratch, so a replica that becomes leader corrects what changed while it
// was not. Run may be called again after it returned, but not twice at
// once.
func (w *Writer) Run(ctx context.Context) error {
	if !w.running.CompareAndSwap(false, true) {
		return errors.New("policystatus: Writer.Run is already running")
	}
	defer w.running.Store(false)

	burst := max(1, int(w.cfg.MaxWritesPerSecond))
	r := &run{
		Writer: w,
		queue: workqueue.NewTypedRateLimitingQueueWithConfig(
			// A policy's retries (conflicts, refusals) back off from
			// 100ms to 30s.
			workqueue.NewTypedItemExponentialFailureRateLimiter[item](100*time.Millisecond, 30*time.Second),
			workqueue.TypedRateLimitingQueueConfig[item]{Name: "mesh_policy_status"}),
		limiter: rate.NewLimiter(rate.Limit(w.cfg.MaxWritesPerSecond), burst),
		reports: map[string]*Report{},
	}
	defer r.queue.ShutDown()

	// The handlers replay the caches as additions: every policy is queued,
	// and every report read, before the registrations report synced.
	regs, err := r.register()
	defer unregister(regs)
	if err != nil {
		return err
	}
	synced := make([]cache.InformerSynced, 0, len(regs))
	for _, reg := range regs {
		synced = append(synced, reg.reg.HasSynced)
	}
	if !cache.WaitForCacheSync(ctx.Done(), synced...) {
		return nil // ctx ended first
	}

	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for r.next(ctx) {
			}
		})
	}
	<-ctx.Done()
	r.queue.ShutDown()
	wg.Wait()
	return nil
}

// next handles one item; false once the queue is shut down.
func (r *run) next(ctx context.Context) bool {
	it, shutdown := r.queue.Get()
	if shutdown {
		return false
	}
	defer r.queue.Done(it)
	if it.report {
		r.checkReport(it.key)
		return true
	}
	if err := r.sync(ctx, it.key); err != nil {
		if ctx.Err() == nil {
			r.queue.AddRateLimited(it)
		}
		return true
	}
	r.queue.Forget(it)
	return true
}

// sync writes one policy's status if it differs from what it should be.
func (r *run) sync(ctx context.Context, key string) error {
	obj, exists, err := r.cfg.PolicyInformer.GetIndexer().GetByKey(key)
	if err != nil || !exists {
		return nil // deleted: nothing to write
	}
	p, ok := obj.(*v1alpha1.AuthorizationPolicy)
	if !ok {
		return nil
	}
	now := time.Now()
	f, err := r.facts(p, now)
	if err != nil {
		r.log.Error("policystatus: read the cache", "policy", key, "err", err)
		return err
	}
	want := statusFor(p, f, p.Status.Conditions, metav1.NewTime(now))
	if apiequality.Semantic.DeepEqual(p.Status, want) {
		return nil
	}
	if err := r.limiter.Wait(ctx); err != nil {
		return err // ctx ended
	}
	upd := p.DeepCopy()
	upd.Status = want
	_, err = r.cfg.Policies.UpdateStatus(ctx, upd)
	switch {
	case err == nil:
		r.metrics.writes.WithLabelValues(resultUpdated).Inc()
		r.log.Debug("policystatus: wrote status", "policy", key, "generation", p.Generation, "enforced", want.Enforced)
		return nil
	case apierrors.IsNotFound(err):
		return nil // deleted meanwhile
	case apierrors.IsConflict(err):
		// The cache is behind: the newer version queues the policy again,
		// and so does the retry.
		r.metrics.writes.WithLabelValues(resultConflict).Inc()
		return err
	default:
		if ctx.Err() != nil {
			return err
		}
		r.metrics.writes.WithLabelValues(resultError).Inc()
		r.log.Error("policystatus: write status", "policy", key, "err", err)
		return err
	}
}

// facts gathers what p's status is computed from, at now.
func (r *run) facts(p *v1alpha1.AuthorizationPolicy, now time.Time) (facts, error) {
	var f facts
	if errs := authzvalidation.Validate(p); len(errs) > 0 {
		f.invalid = errs.ToAggregate().Error()
	}
	sel := labels.Everything()
	if p.Spec.Selector != nil {
		s, err := metav1.LabelSelectorAsSelector(p.Spec.Selector)
		if err != nil {
			f.badSelector = err.Error()
			return f, nil
		}
		sel = s
	}
	var pods []*corev1.Pod
	var err error
	if p.Namespace == authz.RootNamespace {
		// A policy of the root namespace applies in every namespace.
		pods, err = r.podLister.List(sel)
	} else {
		pods, err = r.podLister.Pods(p.Namespace).List(sel)
	}
	if err != nil {
		return f, fmt.Errorf("policystatus: list pods: %w", err)
	}
	for _, pod := range pods {
		if inventory.Meshed(pod) && inventory.Live(pod) {
			f.selected = append(f.selected, pod)
		}
	}
	key := p.Namespace + "/" + p.Name
	r.mu.RLock()
	for _, rep := range r.reports {
		if rep != nil && rep.fresh(now, r.cfg.StaleAfter) {
			f.enforcing += int64(rep.Policies[key][p.Generation])
		}
	}
	r.mu.RUnlock()
	return f, nil
}

// checkReport queues every policy of a report that went stale, or checks
// again when it will have.
func (r *run) checkReport(name string) {
	r.mu.RLock()
	rep := r.reports[name]
	r.mu.RUnlock()
	if rep == nil {
		return // deleted or unreadable: its policies were queued then
	}
	now := time.Now()
	if rep.fresh(now, r.cfg.StaleAfter) {
		r.scheduleExpiry(name, rep, now)
		return
	}
	for key := range rep.Policies {
		r.queue.Add(item{key: key})
	}
}

// scheduleExpiry queues a check of report name for when it goes stale.
// The queue keeps the earliest time of an item, so a check that comes
// too early (the report was renewed since) schedules the next one.
func (r *run) scheduleExpiry(name string, rep *Report, now time.Time) {
	if d := rep.Updated.Add(r.cfg.StaleAfter).Sub(now); d >= 0 {
		r.queue.AddAfter(item{report: true, key: name}, d+10*time.Millisecond)
	}
}
