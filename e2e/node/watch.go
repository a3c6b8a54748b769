package node

import (
	"context"
	"fmt"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
)

// objectKey names a ConfigMap or Secret a running pod mounts.
type objectKey struct {
	resource  string // "configmaps" or "secrets"
	namespace string
	name      string
}

// objectWatches keeps one watch per ConfigMap and Secret that running
// pods mount, as the kubelet's Watch change-detection strategy does: each
// is a single-object informer (field selector metadata.name), shared by
// the pods that mount the object and stopped when the last one stops. So
// the agent sees only the objects it needs, and a change reaches the
// volumes on the watch event.
type objectWatches struct {
	ctx      context.Context // the agent's: every watch stops with it
	kube     kubernetes.Interface
	onChange func(types.UID)
	wg       sync.WaitGroup

	mu sync.Mutex
	m  map[objectKey]*objectWatch
}

type objectWatch struct {
	store  cache.Store
	synced cache.InformerSynced
	cancel context.CancelFunc
	pods   map[types.UID]bool
}

func newObjectWatches(ctx context.Context, kube kubernetes.Interface, onChange func(types.UID)) *objectWatches {
	return &objectWatches{ctx: ctx, kube: kube, onChange: onChange, m: map[objectKey]*objectWatch{}}
}

// volumeObjects are the ConfigMaps and Secrets a pod's volumes mount.
func volumeObjects(p *corev1.Pod) []objectKey {
	var keys []objectKey
	add := func(resource, name string) {
		if name != "" {
			keys = append(keys, objectKey{resource, p.Namespace, name})
		}
	}
	for _, v := range p.Spec.Volumes {
		switch {
		case v.ConfigMap != nil:
			add("configmaps", v.ConfigMap.Name)
		case v.Secret != nil:
			add("secrets", v.Secret.SecretName)
		case v.Projected != nil:
			for _, s := range v.Projected.Sources {
				if s.ConfigMap != nil {
					add("configmaps", s.ConfigMap.Name)
				}
				if s.Secret != nil {
					add("secrets", s.Secret.Name)
				}
			}
		}
	}
	return keys
}

// acquire has the objects watched for pod uid, and waits until each
// watch holds its object's current state.
func (w *objectWatches) acquire(ctx context.Context, uid types.UID, keys []objectKey) error {
	var waits []cache.InformerSynced
	w.mu.Lock()
	for _, k := range keys {
		ow := w.m[k]
		if ow == nil {
			ow = w.startLocked(k)
			w.m[k] = ow
		}
		ow.pods[uid] = true
		waits = append(waits, ow.synced)
	}
	w.mu.Unlock()
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if !cache.WaitForCacheSync(ctx.Done(), waits...) {
		w.release(uid)
		return fmt.Errorf("node: watches of the pod's configMaps and secrets did not sync: %w", ctx.Err())
	}
	return nil
}

func (w *objectWatches) startLocked(k objectKey) *objectWatch {
	var example runtime.Object = &corev1.ConfigMap{}
	if k.resource == "secrets" {
		example = &corev1.Secret{}
	}
	lw := cache.NewFilteredListWatchFromClient(w.kube.CoreV1().RESTClient(), k.resource, k.namespace, func(o *metav1.ListOptions) {
		o.FieldSelector = fields.OneTermEqualSelector("metadata.name", k.name).String()
	})
	inf := cache.NewSharedIndexInformer(lw, example, 0, cache.Indexers{})
	changed := func(any) {
		w.mu.Lock()
		var uids []types.UID
		if ow := w.m[k]; ow != nil {
			for uid := range ow.pods {
				uids = append(uids, uid)
			}
		}
		w.mu.Unlock()
		for _, uid := range uids {
			w.onChange(uid)
		}
	}
	// Errors only when the informer has stopped, which it has not yet.
	_, _ = inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: changed, UpdateFunc: func(_, obj any) { changed(obj) }, DeleteFunc: changed,
	})
	ctx, cancel := context.WithCancel(w.ctx)
	w.wg.Go(func() { inf.RunWithContext(ctx) })
	return &objectWatch{store: inf.GetStore(), synced: inf.HasSynced, cancel: cancel, pods: map[types.UID]bool{}}
}

// release drops pod uid's interest, stopping the watches no pod needs.
func (w *objectWatches) release(uid types.UID) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for k, ow := range w.m {
		if !ow.pods[uid] {
			continue
		}
		delete(ow.pods, uid)
		if len(ow.pods) == 0 {
			ow.cancel()
			delete(w.m, k)
		}
	}
}

// get is a watched object from its watch's cache: watched is false when
// no watch holds it (the caller then asks the API server), and obj is nil
// when the object does not exist.
func (w *objectWatches) get(resource, namespace, name string) (obj any, watched bool) {
	if w == nil {
		return nil, false
	}
	w.mu.Lock()
	ow := w.m[objectKey{resource, namespace, name}]
	w.mu.Unlock()
	if ow == nil || !ow.synced() {
		return nil, false
	}
	obj, ok, err := ow.store.GetByKey(namespace + "/" + name)
	if err != nil || !ok {
		return nil, true
	}
	return obj, true
}

// wait blocks until every watch has stopped (the agent's context ended).
func (w *objectWatches) wait() { w.wg.Wait() }
