package policystatus

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/client-go/kubernetes"
)

// Source counts the proxies connected to this replica that enforce each
// policy generation: the control-plane server.
type Source interface {
	// Enforcement maps "namespace/name" to metadata.generation to the
	// number of connected proxies enforcing that generation.
	Enforcement() map[string]map[int64]int32
	// EnforcementChanged returns a channel that becomes readable (is
	// closed, or receives) after Enforcement may have changed. The
	// Reporter asks for it again after every wake-up, so a channel closed
	// and replaced on each change works, and so does one long-lived
	// channel that is sent on.
	EnforcementChanged() <-chan struct{}
}

// ReporterConfig configures a Reporter.
type ReporterConfig struct {
	// Kube writes the report ConfigMap. Required.
	Kube kubernetes.Interface
	// Namespace is the controller's, where reports live. Required.
	Namespace string
	// Replica names this replica (its pod name): the ConfigMap is
	// ReportName(Replica), so it must make a valid ConfigMap name, and be
	// unique among the replicas. Required.
	Replica string
	// Source gives the counts. Required.
	Source Source
	// MinInterval is the least time between two writes. Zero: 1s.
	MinInterval time.Duration
	// Heartbeat is the most time between two writes, so the Writer can
	// tell a live replica from a dead one; it must be well below the
	// Writer's StaleAfter. Zero: 10s.
	Heartbeat time.Duration
	// Logger. Zero: slog.Default().
	Logger *slog.Logger
}

// Reporter publishes this replica's counts in its report ConfigMap. Every
// replica runs one, leader or not.
type Reporter struct {
	cfg     ReporterConfig
	name    string
	running atomic.Bool
}

// deleteTimeout bounds the report's deletion when Run ends.
const deleteTimeout = 5 * time.Second

// NewReporter checks cfg.
func NewReporter(cfg ReporterConfig) (*Reporter, error) {
	switch {
	case cfg.Kube == nil:
		return nil, errors.New("policystatus: ReporterConfig.Kube is required")
	case cfg.Source == nil:
		return nil, errors.New("policystatus: ReporterConfig.Source is required")
	case cfg.Replica == "":
		return nil, errors.New("policystatus: ReporterConfig.Replica is required")
	case cfg.MinInterval < 0 || cfg.Heartbeat < 0:
		return nil, fmt.Errorf("policystatus: ReporterConfig: negative MinInterval (%s) or Heartbeat (%s)", cfg.MinInterval, cfg.Heartbeat)
	}
	if e := validation.IsDNS1123Label(cfg.Namespace); len(e) > 0 {
		return nil, fmt.Errorf("policystatus: ReporterConfig.Namespace %q: %s", cfg.Namespace, e[0])
	}
	name := ReportName(cfg.Replica)
	if e := validation.IsDNS1123Subdomain(name); len(e) > 0 {
		return nil, fmt.Errorf("policystatus: ReporterConfig.Replica %q makes ConfigMap name %q: %s", cfg.Replica, name, e[0])
	}
	if cfg.MinInterval == 0 {
		cfg.MinInterval = time.Second
	}
	if cfg.Heartbeat == 0 {
		cfg.Heartbeat = 10 * time.Second
	}
	if cfg.Heartbeat < cfg.MinInterval {
		return nil, fmt.Errorf("policystatus: ReporterConfig.Heartbeat %s is below MinInterval %s", cfg.Heartbeat, cfg.MinInterval)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	return &Reporter{cfg: cfg, name: name}, nil
}

// Run writes the report until ctx ends, then deletes it (within 5s) and
// returns nil: a replica that stops takes its counts with it. A failed
// write is logged and tried again MinInterval later; the Writer ignores
// the report once it is stale. Run may be called again after it returned,
// but not twice at once.
func (r *Reporter) Run(ctx context.Context) error {
	if !r.running.CompareAndSwap(false, true) {
		return errors.New("policystatus: Reporter.Run is already running")
	}
	defer r.running.Store(false)
	defer r.delete(ctx)

	var (
		written   map[string]map[int64]int32 // what the ConfigMap holds; nil: write regardless
		lastWrite time.Time                  // zero: never written
	)
	heartbeat := time.NewTimer(0) // the first write is at once
	defer heartbeat.Stop()
	changed := r.cfg.Source.EnforcementChanged()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-changed:
		case <-heartbeat.C:
			written = nil // write even if nothing changed, so the time moves on
		}
		// At most one look at the counts, and one write, per MinInterval:
		// a burst of acknowledgements is one write, and a source whose
		// channel stays readable cannot spin this loop.
		if wait := time.Until(lastWrite.Add(r.cfg.MinInterval)); wait > 0 {
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(wait):
			}
		}
		// The channel is taken before the counts are read, so a change
		// after the read wakes the next round.
		changed = r.cfg.Source.EnforcementChanged()
		counts := clean(r.cfg.Source.Enforcement())
		if written != nil && equalCounts(counts, written) {
			continue
		}
		now := time.Now()
		err := r.write(ctx, &Report{Replica: r.cfg.Replica, Updated: now, Policies: counts})
		lastWrite = now
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			r.cfg.Logger.Error("policystatus: write enforcement report", "configmap", r.cfg.Namespace+"/"+r.name, "err", err)
			written = nil
			heartbeat.Reset(r.cfg.MinInterval) // try again
			continue
		}
		written = counts
		heartbeat.Reset(r.cfg.Heartbeat)
	}
}

// clean copies counts without what the Writer would refuse (a bad key,
// generation or count, which would make it drop the whole report) and
// without zero counts.
func clean(counts map[string]map[int64]int32) map[string]map[int64]int32 {
	out := make(map[string]map[int64]int32, len(counts))
	for key, gens := range counts {
		g := map[int64]int32{}
		for gen, n := range gens {
			if gen >= 1 && n > 0 {
				g[gen] = n
			}
		}
		if len(g) > 0 && checkEntry(key, g) == nil {
			out[key] = g
		}
	}
	return out
}

func equalCounts(a, b map[string]map[int64]int32) bool {
	return maps.EqualFunc(a, b, func(x, y map[int64]int32) bool { return maps.Equal(x, y) })
}

// write replaces the report ConfigMap, creating it when it is missing.
// Each replica owns its ConfigMap, so the update is unconditional.
func (r *Reporter) write(ctx context.Context, rep *Report) error {
	b, err := rep.encode()
	if err != nil {
		return err
	}
	if len(b) > MaxReportSize {
		return fmt.Errorf("policystatus: report of %d bytes, more than %d", len(b), MaxReportSize)
	}
	cm := &corev1.ConfigMap{
		ObjectMeta: metav1.ObjectMeta{Name: r.name, Namespace: r.cfg.Namespace, Labels: map[string]string{ReportLabel: "true"}},
		Data:       map[string]string{ReportKey: string(b)},
	}
	cms := r.cfg.Kube.CoreV1().ConfigMaps(r.cfg.Namespace)
	_, err = cms.Update(ctx, cm, metav1.UpdateOptions{})
	if apierrors.IsNotFound(err) {
		_, err = cms.Create(ctx, cm, metav1.CreateOptions{})
	}
	if err != nil {
		return fmt.Errorf("policystatus: write ConfigMap %s/%s: %w", r.cfg.Namespace, r.name, err)
	}
	return nil
}

// delete removes the report, bounded, after ctx ended.
func (r *Reporter) delete(ctx context.Context) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), deleteTimeout)
	defer cancel()
	err := r.cfg.Kube.CoreV1().ConfigMaps(r.cfg.Namespace).Delete(ctx, r.name, metav1.DeleteOptions{})
	if err != nil && !apierrors.IsNotFound(err) {
		r.cfg.Logger.Error("policystatus: delete enforcement report; the Writer ignores it once stale", "configmap", r.cfg.Namespace+"/"+r.name, "err", err)
	}
}
