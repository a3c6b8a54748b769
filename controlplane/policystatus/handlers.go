package policystatus

import (
	"fmt"
	"maps"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/tools/cache"

	"github.com/mesh-dev/mesh/authz"
	"github.com/mesh-dev/mesh/authz/api/v1alpha1"
	"github.com/mesh-dev/mesh/controlplane/inventory"
)

// registration is one event handler added to a shared informer, so Run can
// remove it when it returns.
type registration struct {
	informer cache.SharedIndexInformer
	reg      cache.ResourceEventHandlerRegistration
}

// register adds the handlers, which only queue work (and keep the parsed
// reports): the API server is written by the workers, so a slow one never
// holds up the informers the rest of the controller shares. Handlers are
// added by Run, not NewWriter, so a replica that is not leader queues
// nothing.
func (r *run) register() ([]registration, error) {
	handlers := []struct {
		informer cache.SharedIndexInformer
		handler  cache.ResourceEventHandler
	}{
		// A policy's own changes, status writes included (those reconcile
		// to no change). A deleted policy needs nothing.
		{r.cfg.PolicyInformer, cache.ResourceEventHandlerFuncs{
			AddFunc:    func(obj any) { r.queuePolicy(obj) },
			UpdateFunc: func(_, cur any) { r.queuePolicy(cur) },
		}},
		{r.pods, cache.ResourceEventHandlerFuncs{
			AddFunc:    func(obj any) { r.podChanged(nil, pod(obj)) },
			UpdateFunc: func(old, cur any) { r.podChanged(pod(old), pod(cur)) },
			DeleteFunc: func(obj any) { r.podChanged(pod(obj), nil) },
		}},
		{r.configMaps, cache.ResourceEventHandlerFuncs{
			AddFunc:    func(obj any) { r.reportChanged(obj, false) },
			UpdateFunc: func(_, cur any) { r.reportChanged(cur, false) },
			DeleteFunc: func(obj any) { r.reportChanged(obj, true) },
		}},
	}
	var regs []registration
	for _, h := range handlers {
		reg, err := h.informer.AddEventHandler(h.handler)
		if err != nil {
			return regs, fmt.Errorf("policystatus: add event handler: %w", err)
		}
		regs = append(regs, registration{h.informer, reg})
	}
	return regs, nil
}

// unregister removes the handlers register added.
func unregister(regs []registration) {
	for _, r := range regs {
		// Fails only for a handle of another informer.
		_ = r.informer.RemoveEventHandler(r.reg)
	}
}

func (r *run) queuePolicy(obj any) {
	if p, ok := obj.(*v1alpha1.AuthorizationPolicy); ok {
		r.queue.Add(item{key: p.Namespace + "/" + p.Name})
	}
}

// pod is obj as a pod (or the last state of one whose deletion the watch
// missed); nil otherwise.
func pod(obj any) *corev1.Pod {
	if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = d.Obj
	}
	p, _ := obj.(*corev1.Pod)
	return p
}

// counted reports whether a policy can select pod: meshed and live.
func counted(pod *corev1.Pod) bool {
	return pod != nil && inventory.Meshed(pod) && inventory.Live(pod)
}

// podChanged queues the policies whose selection a pod's change may have
// changed: those of its namespace and of the root namespace whose selector
// matches its labels before or after. A pod's containers, and so its
// ports, cannot change; only whether it counts and its labels can.
func (r *run) podChanged(old, cur *corev1.Pod) {
	was, is := counted(old), counted(cur)
	if !was && !is {
		return
	}
	if was && is && maps.Equal(old.Labels, cur.Labels) {
		return
	}
	var ns string
	var sets []labels.Set
	if was {
		ns = old.Namespace
		sets = append(sets, labels.Set(old.Labels))
	}
	if is {
		ns = cur.Namespace
		sets = append(sets, labels.Set(cur.Labels))
	}
	idx := r.cfg.PolicyInformer.GetIndexer()
	for _, n := range []string{ns, authz.RootNamespace} {
		objs, err := idx.ByIndex(cache.NamespaceIndex, n)
		if err != nil {
			continue // NewWriter made sure the index exists
		}
		for _, obj := range objs {
			p, ok := obj.(*v1alpha1.AuthorizationPolicy)
			if !ok {
				continue
			}
			if selects(p, sets) {
				r.queue.Add(item{key: p.Namespace + "/" + p.Name})
			}
		}
		if ns == authz.RootNamespace {
			break
		}
	}
}

// selects reports whether p's selector matches one of sets. A selector
// that cannot be matched counts as matching: the policy is reconciled,
// and its status says the selector is bad.
func selects(p *v1alpha1.AuthorizationPolicy, sets []labels.Set) bool {
	if p.Spec.Selector == nil {
		return true
	}
	sel, err := metav1.LabelSelectorAsSelector(p.Spec.Selector)
	if err != nil {
		return true
	}
	for _, s := range sets {
		if sel.Matches(s) {
			return true
		}
	}
	return false
}

// reportChanged keeps the parsed report of a report ConfigMap and queues
// the policies whose sums it changed.
func (r *run) reportChanged(obj any, deleted bool) {
	if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = d.Obj
	}
	cm, ok := obj.(*corev1.ConfigMap)
	if !ok || cm.Namespace != r.cfg.Namespace || !r.reportSel.Matches(labels.Set(cm.Labels)) || !strings.HasPrefix(cm.Name, ReportPrefix) {
		return
	}
	var rep *Report
	if !deleted {
		rep = r.parse(cm)
	}
	r.mu.Lock()
	old := r.reports[cm.Name]
	if deleted {
		delete(r.reports, cm.Name)
	} else {
		r.reports[cm.Name] = rep
	}
	r.mu.Unlock()

	now := time.Now()
	for key := range changedKeys(old, rep, now, r.cfg.StaleAfter) {
		r.queue.Add(item{key: key})
	}
	if rep != nil {
		r.scheduleExpiry(cm.Name, rep, now)
	}
}

// parse reads a report ConfigMap; nil when it cannot be used.
func (r *run) parse(cm *corev1.ConfigMap) *Report {
	rep, err := ParseReport([]byte(cm.Data[ReportKey]))
	if err == nil && ReportName(rep.Replica) != cm.Name {
		// A copy of another replica's report would count its proxies
		// twice.
		err = fmt.Errorf("policystatus: report of replica %q in ConfigMap %s, want %s", rep.Replica, cm.Name, ReportName(rep.Replica))
	}
	if err != nil {
		r.metrics.badReports.Inc()
		r.log.Warn("policystatus: ignoring an enforcement report", "configmap", cm.Namespace+"/"+cm.Name, "err", err)
		return nil
	}
	if !rep.fresh(time.Now(), r.cfg.StaleAfter) && rep.Updated.After(time.Now()) {
		r.log.Warn("policystatus: ignoring an enforcement report dated in the future: is the replica's clock right?", "configmap", cm.Namespace+"/"+cm.Name, "updated", rep.Updated)
	}
	return rep
}

// changedKeys are the policies whose sum may differ between old and cur
// (either may be nil): all of both when one is counted (fresh) and the
// other not, else those whose counts differ.
func changedKeys(old, cur *Report, now time.Time, staleAfter time.Duration) map[string]bool {
	live := func(r *Report) bool { return r != nil && r.fresh(now, staleAfter) }
	keys := map[string]bool{}
	if live(old) != live(cur) {
		for _, r := range []*Report{old, cur} {
			if r != nil {
				for k := range r.Policies {
					keys[k] = true
				}
			}
		}
		return keys
	}
	if !live(cur) {
		return keys // counted neither before nor now
	}
	for k, gens := range cur.Policies {
		if !maps.Equal(gens, old.Policies[k]) {
			keys[k] = true
		}
	}
	for k := range old.Policies {
		if _, ok := cur.Policies[k]; !ok {
			keys[k] = true
		}
	}
	return keys
}
