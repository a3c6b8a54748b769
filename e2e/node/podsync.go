package node

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/workqueue"
)

// resyncPeriod replays every pod (and re-reads its ConfigMap and Secret
// volumes from the watch caches) this often: a safety net only, the work
// is driven by watch events.
const resyncPeriod = 30 * time.Second

// podWorkers is how many pods are started or stopped at once.
const podWorkers = 2

// uidIndex indexes the pod cache by UID, the work queue's key.
const uidIndex = "uid"

// watchPods starts the pod informer (pods bound to this node only), the
// ConfigMap and Secret watches, and the workers that start and stop pods.
// Informer callbacks only queue a pod's UID; the workers do the work. The
// returned stop ends the workers and the informers, and waits for them.
func (n *Node) watchPods(ctx context.Context) (stop func(), err error) {
	ctx, cancel := context.WithCancel(ctx)
	n.queue = workqueue.NewTypedRateLimitingQueueWithConfig(
		workqueue.NewTypedItemExponentialFailureRateLimiter[types.UID](200*time.Millisecond, 10*time.Second),
		workqueue.TypedRateLimitingQueueConfig[types.UID]{Name: "pods"})
	n.watches = newObjectWatches(ctx, n.cfg.Kube, n.queue.Add)
	factory := informers.NewSharedInformerFactoryWithOptions(n.cfg.Kube, resyncPeriod,
		informers.WithTweakListOptions(func(o *metav1.ListOptions) {
			o.FieldSelector = fields.OneTermEqualSelector("spec.nodeName", n.cfg.Name).String()
		}))
	inf := factory.Core().V1().Pods().Informer()
	if err := inf.AddIndexers(cache.Indexers{uidIndex: func(obj any) ([]string, error) {
		if p, ok := obj.(*corev1.Pod); ok {
			return []string{string(p.UID)}, nil
		}
		return nil, nil
	}}); err != nil {
		cancel()
		return nil, fmt.Errorf("node: pod informer: %w", err)
	}
	enqueue := func(obj any) {
		if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
			obj = t.Obj
		}
		if p, ok := obj.(*corev1.Pod); ok {
			n.queue.Add(p.UID)
		}
	}
	if _, err := inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    enqueue,
		UpdateFunc: func(_, obj any) { enqueue(obj) },
		DeleteFunc: enqueue,
	}); err != nil {
		cancel()
		return nil, fmt.Errorf("node: pod informer: %w", err)
	}
	n.podCache = inf.GetIndexer()
	factory.Start(ctx.Done())
	var wg sync.WaitGroup
	stop = func() {
		cancel()
		n.queue.ShutDown()
		wg.Wait()
		factory.Shutdown()
		n.watches.wait()
	}
	if !cache.WaitForCacheSync(ctx.Done(), inf.HasSynced) {
		stop()
		if ctx.Err() != nil {
			return nil, nil
		}
		return nil, errors.New("node: pod informer did not sync")
	}
	for range podWorkers {
		wg.Go(func() {
			for n.processNext(ctx) {
			}
		})
	}
	return stop, nil
}

func (n *Node) processNext(ctx context.Context) bool {
	uid, shutdown := n.queue.Get()
	if shutdown {
		return false
	}
	defer n.queue.Done(uid)
	if err := n.reconcile(ctx, uid); err != nil {
		if ctx.Err() == nil {
			n.cfg.Logger.Warn("pod sync failed", "uid", uid, "err", err)
		}
		n.queue.AddRateLimited(uid)
		return true
	}
	n.queue.Forget(uid)
	return true
}

// podByUID is the pod's latest state from the watch, or nil once the pod
// is gone from the API.
func (n *Node) podByUID(uid types.UID) *corev1.Pod {
	objs, err := n.podCache.ByIndex(uidIndex, string(uid))
	if err != nil || len(objs) == 0 {
		return nil
	}
	p, _ := objs[0].(*corev1.Pod)
	return p
}

// reconcile brings one pod to what the API says: started when newly bound
// here, terminated with its grace period when deleted, its volumes
// refreshed otherwise. A pod's own goroutine does the termination and
// queues the pod again when it is done.
func (n *Node) reconcile(ctx context.Context, uid types.UID) error {
	p := n.podByUID(uid)
	n.mu.Lock()
	rt := n.pods[uid]
	n.mu.Unlock()
	switch {
	case p == nil:
		if rt == nil {
			return nil
		}
		if !rt.finished() {
			rt.stop.request(0, true) // force-deleted: the least grace (minGrace)
			return nil
		}
		n.mu.Lock()
		delete(n.pods, uid)
		n.mu.Unlock()
	case p.DeletionTimestamp != nil:
		if rt != nil && !rt.finished() {
			rt.stop.request(gracePeriod(p), true)
			return nil
		}
		// As the kubelet does: once the containers are gone, the pod
		// object goes too.
		zero := int64(0)
		err := n.cfg.Kube.CoreV1().Pods(p.Namespace).Delete(ctx, p.Name, metav1.DeleteOptions{GracePeriodSeconds: &zero, Preconditions: &metav1.Preconditions{UID: &p.UID}})
		if err != nil && !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) {
			return fmt.Errorf("node: delete pod %s/%s: %w", p.Namespace, p.Name, err)
		}
	case rt == nil:
		if p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed {
			return nil
		}
		return n.startPod(ctx, p)
	default:
		rt.pokeRefresh()
	}
	return nil
}

// startPod gives the pod its network and volumes and starts its goroutine.
func (n *Node) startPod(ctx context.Context, p *corev1.Pod) error {
	log := n.cfg.Logger.With("pod", p.Namespace+"/"+p.Name)
	// A pod of the same name (a StatefulSet's, recreated) may still be
	// terminating: its network namespace has this one's name, and its
	// teardown would remove this one's. Wait for it (the queue retries).
	netns := NetnsName(p.Namespace, p.Name)
	n.mu.Lock()
	for uid, o := range n.pods {
		if uid != p.UID && o.netns == netns && !o.finished() {
			n.mu.Unlock()
			return fmt.Errorf("node: pod %s/%s: waiting for the pod of the same name (%s) to terminate", p.Namespace, p.Name, uid)
		}
	}
	n.mu.Unlock()
	ip, err := n.ipam.allocate(string(p.UID))
	if err != nil {
		return fmt.Errorf("node: pod %s/%s: %w", p.Namespace, p.Name, err)
	}
	rt := &pod{
		obj: p.DeepCopy(), netns: netns, hostIf: hostIf(p.UID), ip: ip, done: make(chan struct{}),
		stop: stopRequest{poke: make(chan struct{}, 1)}, refresh: make(chan struct{}, 1),
	}
	undo := func() {
		n.watches.release(p.UID)
		n.teardownVolumes(rt.obj)
		_ = removePodNetwork(rt.netns, rt.hostIf)
		_ = n.ipam.release(string(p.UID))
	}
	if err := addPodNetwork(rt.netns, rt.hostIf, ip); err != nil {
		undo()
		return fmt.Errorf("node: pod %s/%s: %w", p.Namespace, p.Name, err)
	}
	// Watched before they are read, so no update falls between.
	if err := n.watches.acquire(ctx, p.UID, volumeObjects(p)); err != nil {
		undo()
		return fmt.Errorf("node: pod %s/%s: %w", p.Namespace, p.Name, err)
	}
	if err := n.setupVolumes(ctx, rt); err != nil {
		undo()
		return fmt.Errorf("node: pod %s/%s: volumes: %w", p.Namespace, p.Name, err)
	}
	n.mu.Lock()
	n.pods[p.UID] = rt
	n.mu.Unlock()
	n.podsWG.Go(func() {
		defer func() {
			undo()
			close(rt.done)
			n.queue.Add(p.UID) // for the pod object's deletion, or the entry's
			// A new pod of the same name may be waiting for this one.
			if obj, ok, _ := n.podCache.GetByKey(p.Namespace + "/" + p.Name); ok {
				if np, _ := obj.(*corev1.Pod); np != nil && np.UID != p.UID {
					n.queue.Add(np.UID)
				}
			}
		}()
		newPodRun(n, rt, log).run(ctx)
		n.killLeftovers(rt)
	})
	return nil
}

// killLeftovers SIGKILLs what is left of the pod's process groups (a
// child a container left behind) and waits for them.
func (n *Node) killLeftovers(rt *pod) {
	rt.mu.Lock()
	procs := rt.procs
	rt.mu.Unlock()
	for _, c := range procs {
		_ = killGroup(c.Process.Pid)
	}
	for _, c := range procs {
		for deadline := time.Now().Add(10 * time.Second); alive(c.Process.Pid) && time.Now().Before(deadline); {
			time.Sleep(20 * time.Millisecond)
		}
	}
}

// stopAll terminates every pod (5 s grace) and waits for them, when the
// agent stops.
func (n *Node) stopAll() {
	n.mu.Lock()
	for _, rt := range n.pods {
		rt.stop.request(5*time.Second, false)
	}
	n.mu.Unlock()
	n.podsWG.Wait()
}

func (rt *pod) finished() bool {
	select {
	case <-rt.done:
		return true
	default:
		return false
	}
}

// pokeRefresh has the pod's goroutine re-read its ConfigMap and Secret
// volumes.
func (rt *pod) pokeRefresh() {
	select {
	case rt.refresh <- struct{}{}:
	default:
	}
}
