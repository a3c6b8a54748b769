package inventory

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"sort"
	"sync"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/protobuf/proto"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/informers"
	corelisters "k8s.io/client-go/listers/core/v1"
	discoverylisters "k8s.io/client-go/listers/discovery/v1"
	"k8s.io/client-go/tools/cache"

	"github.com/mesh-dev/mesh/authz"
	"github.com/mesh-dev/mesh/authz/api/v1alpha1"
	controlplanev1 "github.com/mesh-dev/mesh/controlplane/api/v1"
)

// Config configures an Inventory.
type Config struct {
	// TrustDomain names the workloads' identities. Required.
	TrustDomain spiffeid.TrustDomain
	// MeshDefault is the install-wide default policy. Zero means
	// allow-mesh.
	MeshDefault authz.DefaultMode
	// Informers gives the pod, Service, EndpointSlice and namespace
	// informers; the Inventory registers its handlers and an index, and
	// the caller starts the factory. Required.
	Informers informers.SharedInformerFactory
	// Policies is an informer of *v1alpha1.AuthorizationPolicy, started by
	// the caller. Required.
	Policies cache.SharedIndexInformer
	// PoliciesOnly makes an inventory that answers Pod and Policy alone:
	// it asks Informers for no Service or EndpointSlice informer and
	// computes no destinations. meshctl computes pods' policies so, with
	// no need to read the cluster's Services. Zero: everything.
	PoliciesOnly bool
	// Logger. Zero means discard.
	Logger *slog.Logger
}

const podIPIndex = "mesh.dev/pod-ip"

// Inventory is the controller's view of the cluster.
type Inventory struct {
	cfg       Config
	pods      corelisters.PodLister
	podIndex  cache.Indexer
	services  corelisters.ServiceLister
	slices    discoverylisters.EndpointSliceLister
	nss       corelisters.NamespaceLister
	policies  cache.Indexer
	hasSynced []cache.InformerSynced

	mu sync.RWMutex
	// dests are the current destinations by address, each immutable.
	dests map[string]*controlplanev1.Destination
	subs  map[*Subscription]struct{}
}

// New registers the inventory's handlers on the informers.
func New(cfg Config) (*Inventory, error) {
	if cfg.TrustDomain.IsZero() || cfg.Informers == nil || cfg.Policies == nil {
		return nil, errors.New("inventory: TrustDomain, Informers and Policies are required")
	}
	if cfg.MeshDefault == "" {
		cfg.MeshDefault = authz.DefaultAllowMesh
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	podInf := cfg.Informers.Core().V1().Pods()
	nsInf := cfg.Informers.Core().V1().Namespaces()
	if err := podInf.Informer().AddIndexers(cache.Indexers{podIPIndex: podIPs}); err != nil {
		return nil, fmt.Errorf("inventory: pod index: %w", err)
	}
	inv := &Inventory{
		cfg: cfg, pods: podInf.Lister(), podIndex: podInf.Informer().GetIndexer(), nss: nsInf.Lister(),
		policies: cfg.Policies.GetIndexer(),
		dests:    map[string]*controlplanev1.Destination{}, subs: map[*Subscription]struct{}{},
	}
	handlers := []struct {
		inf cache.SharedIndexInformer
		on  func(old, cur any)
	}{
		{podInf.Informer(), inv.onPod},
		{nsInf.Informer(), inv.onNamespace},
		{cfg.Policies, inv.onPolicy},
	}
	if !cfg.PoliciesOnly {
		// Asking for an informer is what makes the factory start it.
		svcInf := cfg.Informers.Core().V1().Services()
		sliceInf := cfg.Informers.Discovery().V1().EndpointSlices()
		inv.services, inv.slices = svcInf.Lister(), sliceInf.Lister()
		handlers = append(handlers, []struct {
			inf cache.SharedIndexInformer
			on  func(old, cur any)
		}{{svcInf.Informer(), inv.onService}, {sliceInf.Informer(), inv.onSlice}}...)
	}
	for _, h := range handlers {
		on := h.on
		reg, err := h.inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
			AddFunc:    func(obj any) { on(nil, obj) },
			UpdateFunc: func(old, cur any) { on(old, cur) },
			DeleteFunc: func(obj any) {
				if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
					obj = t.Obj
				}
				on(obj, nil)
			},
		})
		if err != nil {
			return nil, fmt.Errorf("inventory: %w", err)
		}
		inv.hasSynced = append(inv.hasSynced, reg.HasSynced)
	}
	return inv, nil
}

// HasSynced reports whether every informer has delivered its first list
// to the inventory: before that, answers would be incomplete.
func (inv *Inventory) HasSynced() bool {
	for _, s := range inv.hasSynced {
		if !s() {
			return false
		}
	}
	return true
}

// podIPs indexes pods by their addresses.
func podIPs(obj any) ([]string, error) {
	pod, ok := obj.(*corev1.Pod)
	if !ok || pod.Spec.HostNetwork {
		return nil, nil
	}
	var ips []string
	for _, ip := range pod.Status.PodIPs {
		ips = append(ips, canonicalIP(ip.IP))
	}
	if len(ips) == 0 && pod.Status.PodIP != "" {
		ips = append(ips, canonicalIP(pod.Status.PodIP))
	}
	return ips, nil
}

func canonicalIP(s string) string {
	a, err := netip.ParseAddr(s)
	if err != nil {
		return s
	}
	return a.Unmap().String()
}

func (inv *Inventory) onPod(old, cur any) {
	if !inv.cfg.PoliciesOnly {
		inv.podDestinations(old, cur)
	}
	// Its labels decide which policies select it; its ports, what named
	// ports resolve to.
	for _, obj := range []any{cur, old} {
		if pod, ok := obj.(*corev1.Pod); ok {
			inv.policyChanged(pod.Namespace, pod.Name)
			break
		}
	}
}

// podDestinations recomputes the destinations a pod's change touches.
func (inv *Inventory) podDestinations(old, cur any) {
	var keys []string
	namespaces := map[string]bool{}
	for _, obj := range []any{old, cur} {
		pod, ok := obj.(*corev1.Pod)
		if !ok {
			continue
		}
		ips, _ := podIPs(pod)
		keys = append(keys, ips...)
		namespaces[pod.Namespace] = true
	}
	for ns := range namespaces {
		// A pod's readiness, address or meshing changes the endpoints of
		// the Services that select it.
		keys = append(keys, inv.serviceKeysIn(ns)...)
	}
	inv.recompute(keys)
}

func (inv *Inventory) onService(old, cur any) {
	var keys []string
	for _, obj := range []any{old, cur} {
		if svc, ok := obj.(*corev1.Service); ok {
			// The old object's addresses, and the new one's.
			keys = append(keys, serviceAddrs(svc)...)
		}
	}
	inv.recompute(keys)
}

func (inv *Inventory) onSlice(old, cur any) {
	var keys []string
	for _, obj := range []any{old, cur} {
		if s, ok := obj.(*discoveryv1.EndpointSlice); ok {
			if name := s.Labels[discoveryv1.LabelServiceName]; name != "" {
				keys = append(keys, inv.serviceKeys(s.Namespace, name)...)
			}
		}
	}
	inv.recompute(keys)
}

func (inv *Inventory) onNamespace(old, cur any) {
	// Its annotation is the default policy of its pods.
	for _, obj := range []any{cur, old} {
		if ns, ok := obj.(*corev1.Namespace); ok {
			inv.policyChanged(ns.Name, "")
			return
		}
	}
}

func (inv *Inventory) onPolicy(old, cur any) {
	for _, obj := range []any{cur, old} {
		if p, ok := obj.(*v1alpha1.AuthorizationPolicy); ok {
			if p.Namespace == authz.RootNamespace {
				inv.policyChanged("", "")
			} else {
				inv.policyChanged(p.Namespace, "")
			}
			return
		}
	}
}

// serviceKeysIn is every Service address of namespace ns.
func (inv *Inventory) serviceKeysIn(ns string) []string {
	var keys []string
	svcs, _ := inv.services.Services(ns).List(everything)
	for _, svc := range svcs {
		keys = append(keys, serviceAddrs(svc)...)
	}
	return keys
}

// serviceKeys is the addresses a Service has now.
func (inv *Inventory) serviceKeys(ns, name string) []string {
	var keys []string
	if svc, err := inv.services.Services(ns).Get(name); err == nil {
		keys = append(keys, serviceAddrs(svc)...)
	}
	return keys
}

// serviceAddrs is a Service's "clusterIP:port" addresses (none for a
// headless Service: its pods are reached at their own addresses).
func serviceAddrs(svc *corev1.Service) []string {
	var out []string
	ips := svc.Spec.ClusterIPs
	if len(ips) == 0 && svc.Spec.ClusterIP != "" {
		ips = []string{svc.Spec.ClusterIP}
	}
	for _, ip := range ips {
		a, err := netip.ParseAddr(ip)
		if err != nil {
			continue // "None": headless
		}
		for _, p := range svc.Spec.Ports {
			if p.Protocol != "" && p.Protocol != corev1.ProtocolTCP {
				continue
			}
			out = append(out, netip.AddrPortFrom(a.Unmap(), uint16(p.Port)).String())
		}
	}
	return out
}

// recompute brings the destinations at keys up to date and tells the
// subscribers which changed.
func (inv *Inventory) recompute(keys []string) {
	if len(keys) == 0 {
		return
	}
	sort.Strings(keys)
	keys = compactStrings(keys)
	inv.mu.Lock()
	var changed []string
	for _, k := range keys {
		d := inv.compute(k)
		old, had := inv.dests[k]
		switch {
		case d == nil && had:
			delete(inv.dests, k)
		case d != nil && (!had || !proto.Equal(old, d)):
			inv.dests[k] = d
		default:
			continue
		}
		changed = append(changed, k)
	}
	for sub := range inv.subs {
		sub.markDestinations(changed)
	}
	inv.mu.Unlock()
}

func compactStrings(s []string) []string {
	out := s[:0]
	for i, v := range s {
		if i == 0 || v != s[i-1] {
			out = append(out, v)
		}
	}
	return out
}

// compute is the destination at key, or nil: a pod address ("ip") or a
// Service port ("ip:port"). inv.mu is held.
func (inv *Inventory) compute(key string) *controlplanev1.Destination {
	if ap, err := netip.ParseAddrPort(key); err == nil {
		return inv.computeService(ap)
	}
	objs, _ := inv.podIndex.ByIndex(podIPIndex, key)
	// Two pods can briefly claim one address (one finished, one new):
	// the live one wins; between two live ones, the meshed one, so that
	// nothing meshed is ever taken for plaintext.
	var best *corev1.Pod
	for _, o := range objs {
		pod := o.(*corev1.Pod)
		if !Live(pod) {
			continue
		}
		if best == nil || (Meshed(pod) && !Meshed(best)) {
			best = pod
		}
	}
	if best == nil || !Meshed(best) {
		return nil
	}
	id, err := Identity(inv.cfg.TrustDomain, best)
	if err != nil {
		inv.cfg.Logger.Warn("pod has no valid identity", "pod", best.Namespace+"/"+best.Name, "err", err)
		return &controlplanev1.Destination{Address: key, Kind: controlplanev1.Destination_POD, Namespace: best.Namespace, Name: best.Name, Meshed: true}
	}
	return &controlplanev1.Destination{
		Address: key, Kind: controlplanev1.Destination_POD, Namespace: best.Namespace, Name: best.Name,
		Meshed: true, Identity: id.String(), OpaquePorts: OpaquePorts(best),
	}
}

// computeService is the Service port at ap with its ready endpoints.
func (inv *Inventory) computeService(ap netip.AddrPort) *controlplanev1.Destination {
	svc := inv.serviceAt(ap)
	if svc == nil {
		return nil
	}
	var port *corev1.ServicePort
	for i := range svc.Spec.Ports {
		if uint16(svc.Spec.Ports[i].Port) == ap.Port() {
			port = &svc.Spec.Ports[i]
		}
	}
	if port == nil {
		return nil
	}
	d := &controlplanev1.Destination{
		Address: ap.String(), Kind: controlplanev1.Destination_SERVICE,
		Namespace: svc.Namespace, Name: svc.Name, Protocol: protocolOf(port),
	}
	// A bad annotation is logged and ignored: the Service stays reachable
	// with the proxies' defaults.
	var err error
	if d.RequestTimeoutMs, err = Timeout(svc.Annotations, RequestTimeoutAnnotation); err != nil {
		inv.cfg.Logger.Warn("ignoring Service annotation", "service", svc.Namespace+"/"+svc.Name, "err", err)
	}
	if d.ConnectTimeoutMs, err = Timeout(svc.Annotations, ConnectTimeoutAnnotation); err != nil {
		inv.cfg.Logger.Warn("ignoring Service annotation", "service", svc.Namespace+"/"+svc.Name, "err", err)
	}
	slices, _ := inv.slices.EndpointSlices(svc.Namespace).List(everything)
	seen := map[string]bool{}
	for _, s := range slices {
		if s.Labels[discoveryv1.LabelServiceName] != svc.Name {
			continue
		}
		if s.AddressType != discoveryv1.AddressTypeIPv4 && s.AddressType != discoveryv1.AddressTypeIPv6 {
			continue
		}
		var target int32 = -1
		for _, p := range s.Ports {
			if p.Port != nil && (p.Name == nil && port.Name == "" || p.Name != nil && *p.Name == port.Name) {
				target = *p.Port
			}
		}
		if target < 0 {
			continue
		}
		for _, ep := range s.Endpoints {
			if ep.Conditions.Ready != nil && !*ep.Conditions.Ready {
				continue
			}
			for _, addr := range ep.Addresses {
				a, err := netip.ParseAddr(addr)
				if err != nil {
					continue
				}
				e := &controlplanev1.Endpoint{Address: netip.AddrPortFrom(a.Unmap(), uint16(target)).String()}
				if seen[e.Address] {
					continue
				}
				seen[e.Address] = true
				if ep.TargetRef != nil && ep.TargetRef.Kind == "Pod" {
					e.Pod = ep.TargetRef.Name
				}
				// The identity is the pod's at that address now, as the
				// pod's own destination says.
				if pd := inv.compute(a.Unmap().String()); pd != nil && pd.Meshed {
					e.Meshed, e.Identity = true, pd.Identity
				}
				d.Endpoints = append(d.Endpoints, e)
			}
		}
	}
	sort.Slice(d.Endpoints, func(i, j int) bool { return d.Endpoints[i].Address < d.Endpoints[j].Address })
	return d
}

// serviceAt is the Service whose cluster IP is ap's address.
func (inv *Inventory) serviceAt(ap netip.AddrPort) *corev1.Service {
	svcs, _ := inv.services.List(everything)
	// A linear scan per Service event; an index by cluster IP would be
	// the next step at thousands of Services.
	var found *corev1.Service
	for _, svc := range svcs {
		for _, ip := range append([]string{svc.Spec.ClusterIP}, svc.Spec.ClusterIPs...) {
			if a, err := netip.ParseAddr(ip); err == nil && a.Unmap() == ap.Addr() {
				found = svc
			}
		}
	}
	return found
}

// protocolOf is what a Service port declares it speaks: its appProtocol,
// else its name's prefix (as Istio reads them), else nothing.
func protocolOf(p *corev1.ServicePort) string {
	name := p.Name
	if p.AppProtocol != nil {
		name = *p.AppProtocol
	}
	switch {
	case name == "grpc" || hasPrefix(name, "grpc-"):
		return "grpc"
	case name == "http" || name == "http2" || name == "kubernetes.io/h2c" || hasPrefix(name, "http-") || hasPrefix(name, "http2-"):
		return "http"
	case name == "tcp" || name == "mesh.dev/opaque" || hasPrefix(name, "tcp-"):
		return "opaque"
	}
	return ""
}

func hasPrefix(s, p string) bool { return len(s) >= len(p) && s[:len(p)] == p }

// Destinations is every destination now, sorted by address.
func (inv *Inventory) Destinations() []*controlplanev1.Destination {
	inv.mu.RLock()
	defer inv.mu.RUnlock()
	out := make([]*controlplanev1.Destination, 0, len(inv.dests))
	for _, d := range inv.dests {
		out = append(out, d)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Address < out[j].Address })
	return out
}

// Destination is the destination at key, or nil.
func (inv *Inventory) Destination(key string) *controlplanev1.Destination {
	inv.mu.RLock()
	defer inv.mu.RUnlock()
	return inv.dests[key]
}

// Pod is the pod ns/name from the informer's cache.
func (inv *Inventory) Pod(ns, name string) (*corev1.Pod, error) {
	return inv.pods.Pods(ns).Get(name)
}

var everything = labels.Everything()
