package trustbundle

import (
	"errors"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/workqueue"

	"github.com/mesh-dev/mesh/controlplane/inventory"
)

// registration is one event handler added to a shared informer, so Run can
// remove it when it returns.
type registration struct {
	informer cache.SharedIndexInformer
	reg      cache.ResourceEventHandlerRegistration
}

// register adds the handlers, which only queue a namespace name: the
// writing happens in the workers, so a slow API server never holds up the
// informers that the rest of the controller shares. Handlers are added by
// Run, not New, so a replica that is not leader queues nothing.
func (p *Publisher) register(queue workqueue.TypedInterface[string]) ([]registration, error) {
	handlers := []struct {
		informer cache.SharedIndexInformer
		handler  cache.ResourceEventHandler
	}{
		// A pod's containers cannot change after it is created, so whether
		// it is meshed is known at Add; updates (status, mostly) are
		// ignored, and a deleted pod leaves the ConfigMap in place.
		{p.pods, cache.ResourceEventHandlerFuncs{AddFunc: func(obj any) {
			if pod, ok := obj.(*corev1.Pod); ok && inventory.Meshed(pod) {
				queue.Add(pod.Namespace)
			}
		}}},
		// A new namespace, or one whose labels changed.
		{p.namespaces, cache.ResourceEventHandlerFuncs{
			AddFunc: func(obj any) {
				if ns, ok := obj.(*corev1.Namespace); ok {
					queue.Add(ns.Name)
				}
			},
			UpdateFunc: func(old, cur any) {
				o, ok1 := old.(*corev1.Namespace)
				n, ok2 := cur.(*corev1.Namespace)
				if ok1 && ok2 && o.Labels[InjectLabel] != n.Labels[InjectLabel] {
					queue.Add(n.Name)
				}
			},
		}},
		// Any change to a ConfigMap of ours, our own writes included (they
		// sync to no change): a hand edit or deletion is put back.
		{p.configMaps, cache.ResourceEventHandlerFuncs{
			AddFunc:    func(obj any) { queueConfigMap(queue, obj) },
			UpdateFunc: func(_, cur any) { queueConfigMap(queue, cur) },
			DeleteFunc: func(obj any) { queueConfigMap(queue, obj) },
		}},
	}
	var regs []registration
	for _, h := range handlers {
		reg, err := h.informer.AddEventHandler(h.handler)
		if err != nil {
			return regs, fmt.Errorf("trustbundle: add event handler: %w", err)
		}
		regs = append(regs, registration{h.informer, reg})
	}
	return regs, nil
}

// unregister removes the handlers register added.
func (p *Publisher) unregister(regs []registration) {
	var errs []error
	for _, r := range regs {
		errs = append(errs, r.informer.RemoveEventHandler(r.reg))
	}
	if err := errors.Join(errs...); err != nil {
		p.log.Error("trustbundle: remove event handlers", "err", err)
	}
}

// queueConfigMap queues the namespace of obj if it is a ConfigMap of ours
// (or the last state of one whose deletion the watch missed).
func queueConfigMap(queue workqueue.TypedInterface[string], obj any) {
	if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = d.Obj
	}
	if cm, ok := obj.(*corev1.ConfigMap); ok && cm.Name == ConfigMapName {
		queue.Add(cm.Namespace)
	}
}
