package castatus

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"reflect"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"

	"github.com/mesh-dev/mesh/ca"
)

// Authority is the CA the Publisher reports on and rotates (*ca.CA).
type Authority interface {
	Status() ca.Status
	// Updated is closed when the CA's state changes.
	Updated() <-chan struct{}
	PrepareRoot(ctx context.Context) error
	ActivateRoot(ctx context.Context) error
	RetireRoot(ctx context.Context) error
	RotateIssuerNow(ctx context.Context) error
}

// Config configures a Publisher.
type Config struct {
	// Kube writes the ConfigMap. Required.
	Kube kubernetes.Interface
	// Informers provides the ConfigMaps; the caller starts the factory.
	// Only Namespace's are read: a factory limited to it caches no other
	// (the controller's is). Required.
	Informers informers.SharedInformerFactory
	// CA is the authority. Required.
	CA Authority
	// Namespace is the controller's namespace. Required.
	Namespace string
	// Replica names the writer in the status. Zero: empty.
	Replica string
	// Resync is how often the status is rewritten even if nothing
	// changed, so readers can tell a live controller from a stale
	// ConfigMap. Zero means a minute.
	Resync time.Duration
	// Logger. Zero means slog.Default().
	Logger *slog.Logger
	// Now is the clock. Zero means time.Now.
	Now func() time.Time
}

// Publisher keeps mesh-ca-status current and takes the steps it asks
// for. Only the leader should run one.
type Publisher struct {
	cfg      Config
	lister   corelisters.ConfigMapLister
	informer cache.SharedIndexInformer
	// taken is the last request taken, so one whose outcome could not be
	// written yet is not taken twice. Only Run's goroutine uses it.
	taken *Result
}

// New checks cfg and registers the ConfigMap informer with cfg.Informers.
func New(cfg Config) (*Publisher, error) {
	switch {
	case cfg.Kube == nil:
		return nil, errors.New("castatus: Config.Kube is required")
	case cfg.Informers == nil:
		return nil, errors.New("castatus: Config.Informers is required")
	case cfg.CA == nil:
		return nil, errors.New("castatus: Config.CA is required")
	case cfg.Namespace == "":
		return nil, errors.New("castatus: Config.Namespace is required")
	}
	if cfg.Resync == 0 {
		cfg.Resync = time.Minute
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	cms := cfg.Informers.Core().V1().ConfigMaps()
	return &Publisher{cfg: cfg, lister: cms.Lister(), informer: cms.Informer()}, nil
}

// Run publishes the status and takes requested steps until ctx ends, then
// returns nil. The informer's handler only wakes the loop: the API calls
// and the CA's steps run here, never in the callback.
func (p *Publisher) Run(ctx context.Context) error {
	kick := make(chan struct{}, 1)
	wake := func(obj any) {
		if cm, ok := obj.(*corev1.ConfigMap); ok && (cm.Namespace != p.cfg.Namespace || cm.Name != ConfigMapName) {
			return
		}
		select {
		case kick <- struct{}{}:
		default:
		}
	}
	reg, err := p.informer.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: wake, UpdateFunc: func(_, o any) { wake(o) }, DeleteFunc: wake,
	})
	if err != nil {
		return fmt.Errorf("castatus: %w", err)
	}
	defer func() { _ = p.informer.RemoveEventHandler(reg) }()
	if !cache.WaitForCacheSync(ctx.Done(), reg.HasSynced) {
		return nil
	}
	t := time.NewTicker(p.cfg.Resync)
	defer t.Stop()
	var written time.Time
	backoff := time.Second
	for {
		updated := p.cfg.CA.Updated()
		force := p.cfg.Now().Sub(written) >= p.cfg.Resync
		if err := p.sync(ctx, force); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			p.cfg.Logger.Error("publishing the CA status; will retry", "configMap", p.cfg.Namespace+"/"+ConfigMapName, "err", err)
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(backoff):
			}
			backoff = min(2*backoff, 30*time.Second)
			continue
		}
		backoff = time.Second
		if force {
			written = p.cfg.Now()
		}
		select {
		case <-ctx.Done():
			return nil
		case <-kick:
		case <-updated:
		case <-t.C:
		}
	}
}

// sync takes a pending request, if any, and writes the status if it
// changed (or if force).
func (p *Publisher) sync(ctx context.Context, force bool) error {
	cm, err := p.lister.ConfigMaps(p.cfg.Namespace).Get(ConfigMapName)
	if err != nil && !apierrors.IsNotFound(err) {
		return err
	}
	var old *Document
	if cm != nil {
		old, _ = ParseDocument(cm.Data[StatusKey]) // a damaged status is rewritten
	}
	doc := Document{Replica: p.cfg.Replica}
	if old != nil {
		doc.LastRequest = old.LastRequest
	}
	if cm != nil {
		if raw, ok := cm.Annotations[RequestAnnotation]; ok {
			doc.LastRequest = p.take(ctx, raw, doc.LastRequest)
		}
	}
	doc.Status = p.cfg.CA.Status()
	if old != nil && !force && reflect.DeepEqual(old.Status, doc.Status) && reflect.DeepEqual(old.LastRequest, doc.LastRequest) && old.Replica == doc.Replica {
		return nil
	}
	doc.UpdatedAt = p.cfg.Now().UTC().Truncate(time.Second)
	b, err := json.MarshalIndent(doc, "", "  ")
	if err != nil {
		return err
	}
	if cm == nil {
		_, err = p.cfg.Kube.CoreV1().ConfigMaps(p.cfg.Namespace).Create(ctx, &corev1.ConfigMap{
			ObjectMeta: metav1.ObjectMeta{Name: ConfigMapName, Namespace: p.cfg.Namespace, Labels: map[string]string{"app.kubernetes.io/part-of": "mesh"}},
			Data:       map[string]string{StatusKey: string(b)},
		}, metav1.CreateOptions{})
		return err
	}
	// A merge patch of the status alone: it never overwrites a request
	// meshctl annotated meanwhile, which the informer then brings.
	patch, err := json.Marshal(map[string]any{"data": map[string]string{StatusKey: string(b)}})
	if err != nil {
		return err
	}
	_, err = p.cfg.Kube.CoreV1().ConfigMaps(p.cfg.Namespace).Patch(ctx, ConfigMapName, types.MergePatchType, patch, metav1.PatchOptions{})
	return err
}

// take runs the request in raw unless last already answers it, and
// returns the outcome to record.
func (p *Publisher) take(ctx context.Context, raw string, last *Result) *Result {
	req, err := ParseRequest(raw)
	if err != nil {
		// Unreadable requests are answered under a fixed id so they are
		// recorded once, not retried forever: a digest of the annotation,
		// which may be as long as the API server allows and is already
		// there to read.
		sum := sha256.Sum256([]byte(raw))
		id := "invalid:" + hex.EncodeToString(sum[:8])
		if last != nil && last.ID == id {
			return last
		}
		return &Result{ID: id, At: p.cfg.Now().UTC(), Error: err.Error()}
	}
	if last != nil && last.ID == req.ID {
		return last
	}
	if p.taken != nil && p.taken.ID == req.ID {
		return p.taken
	}
	var step func(context.Context) error
	switch req.Step {
	case PrepareRoot:
		step = p.cfg.CA.PrepareRoot
	case ActivateRoot:
		step = p.cfg.CA.ActivateRoot
	case RetireRoot:
		step = p.cfg.CA.RetireRoot
	case RotateIssuer:
		step = p.cfg.CA.RotateIssuerNow
	}
	res := &Result{ID: req.ID, Step: req.Step}
	if err := step(ctx); err != nil {
		res.Error = err.Error()
		p.cfg.Logger.Warn("CA rotation step refused", "step", req.Step, "request", req.ID, "err", err)
	} else {
		p.cfg.Logger.Info("CA rotation step taken", "step", req.Step, "request", req.ID)
	}
	res.At = p.cfg.Now().UTC()
	p.taken = res
	return res
}
