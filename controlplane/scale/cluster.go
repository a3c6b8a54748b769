package scale

import (
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	kruntime "k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/tools/cache"

	"github.com/mesh-dev/mesh/authz"
	"github.com/mesh-dev/mesh/authz/api/v1alpha1"
	"github.com/mesh-dev/mesh/controlplane/inventory"
	"github.com/mesh-dev/mesh/internal/policyinformer"
)

// The simulated cluster. Pod i belongs to app i%Apps, and app a
// lives in namespace a%Namespaces with ServiceAccount = app name, so
// every app has Config.Pods/Apps pods and the first Config.Proxies pods
// (those that stream) are spread evenly over every app and namespace.
const (
	Namespaces = 10
	Apps       = 100
	// DefaultPods and DefaultProxies are the scale: 10,000 pods,
	// 1,000 of them streaming.
	DefaultPods    = 10_000
	DefaultProxies = 1_000
	// maxPods keeps the pods' addresses (podIP) below the Services'.
	maxPods = 50_000

	// rootPolicy is the root-namespace policy each iteration changes:
	// it applies to every pod.
	rootPolicy = "bench-root"
	// appPort is every app container's port, named "http".
	appPort = 8080

	// setupTimeout bounds the informers' sync and the proxies'
	// first policy; pushTimeout one push to every proxy.
	setupTimeout = 3 * time.Minute
	pushTimeout  = 30 * time.Second
)

var trustDomain = spiffeid.RequireTrustDomainFromString("cluster.local")

func namespace(app int) string { return fmt.Sprintf("team-%d", app%Namespaces) }
func appName(app int) string   { return fmt.Sprintf("app-%02d", app) }
func podName(i int) string {
	return fmt.Sprintf("%s-%04d", appName(i%Apps), i/Apps)
}

// podIP is pod i's address: 198.18.0.1 onwards.
func podIP(i int) string {
	n := i + 1
	return netip.AddrFrom4([4]byte{198, 18, byte(n >> 8), byte(n)}).String()
}

// serviceIP is app a's ClusterIP, in 198.18.200.0/24, clear of the
// pods' 198.18.0.1-198.18.39.16.
func serviceIP(app int) string {
	return netip.AddrFrom4([4]byte{198, 18, 200, byte(app + 1)}).String()
}

// objects is the cluster: namespaces, pods, one Service and one
// EndpointSlice per app.
func objects(pods int) []kruntime.Object {
	objs := []kruntime.Object{&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: authz.RootNamespace}}}
	for n := range Namespaces {
		objs = append(objs, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: namespace(n)}})
	}
	endpoints := make([][]discoveryv1.Endpoint, Apps)
	ready := true
	for i := range pods {
		app := i % Apps
		ns, name, ip := namespace(app), podName(i), podIP(i)
		objs = append(objs, &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: map[string]string{"app": appName(app)}},
			Spec: corev1.PodSpec{
				NodeName:           fmt.Sprintf("node-%d", i%50),
				ServiceAccountName: appName(app),
				InitContainers:     []corev1.Container{{Name: inventory.ProxyContainer, Image: "mesh-proxy"}},
				Containers: []corev1.Container{{Name: "app", Image: "app", Ports: []corev1.ContainerPort{
					{Name: "http", ContainerPort: appPort, Protocol: corev1.ProtocolTCP},
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
	portName, port := "http", int32(appPort)
	for app := range Apps {
		ns, name := namespace(app), appName(app)
		objs = append(objs,
			&corev1.Service{
				ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
				Spec: corev1.ServiceSpec{
					ClusterIP: serviceIP(app), ClusterIPs: []string{serviceIP(app)},
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

// rootAt is the root policy at generation gen: every namespace's
// workloads may call the http port, on a path that names the generation
// (so each generation compiles to a different policy).
func rootAt(gen int64) *v1alpha1.AuthorizationPolicy {
	var namespaces []string
	for n := range Namespaces {
		namespaces = append(namespaces, namespace(n))
	}
	return &v1alpha1.AuthorizationPolicy{
		ObjectMeta: metav1.ObjectMeta{
			Namespace: authz.RootNamespace, Name: rootPolicy, Generation: gen,
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

// appPolicies is one ALLOW policy per app, selecting its pods by
// label: the next app's ServiceAccount may GET its port.
func appPolicies() []v1alpha1.AuthorizationPolicy {
	var out []v1alpha1.AuthorizationPolicy
	for app := range Apps {
		out = append(out, v1alpha1.AuthorizationPolicy{
			ObjectMeta: metav1.ObjectMeta{Namespace: namespace(app), Name: appName(app) + "-callers", Generation: 1, ResourceVersion: "1"},
			Spec: v1alpha1.AuthorizationPolicySpec{
				Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": appName(app)}},
				Action:   v1alpha1.Allow,
				Rules: []v1alpha1.Rule{{
					From: []v1alpha1.Source{{ServiceAccounts: []string{appName((app + 1) % Apps)}}},
					To:   []v1alpha1.Operation{{Ports: []intstr.IntOrString{intstr.FromInt32(appPort)}, Methods: []string{"GET"}}},
				}},
			},
		})
	}
	return out
}

// policySource is the policies' ListWatch: the app policies and the
// root policy as it is now, and a fake watch through which the benchmark
// modifies the root policy.
type policySource struct {
	mu      sync.Mutex
	root    *v1alpha1.AuthorizationPolicy
	apps    []v1alpha1.AuthorizationPolicy
	watcher *watch.RaceFreeFakeWatcher // the reflector's current watch
}

// informer is the policies' informer: the list is the policies as they
// are now; each watch is a new fake, which setRoot sends to.
func (s *policySource) informer() cache.SharedIndexInformer {
	return policyinformer.New(func() *v1alpha1.AuthorizationPolicyList {
		s.mu.Lock()
		defer s.mu.Unlock()
		l := &v1alpha1.AuthorizationPolicyList{ListMeta: metav1.ListMeta{ResourceVersion: s.root.ResourceVersion}}
		l.Items = append(slices.Clone(s.apps), *s.root.DeepCopy())
		return l
	}, func() watch.Interface {
		s.mu.Lock()
		defer s.mu.Unlock()
		// A new watch each time: a reflector that restarts its watch
		// lists again first, so it sees every change either way.
		s.watcher = watch.NewRaceFreeFake()
		return s.watcher
	})
}

// setRoot makes p the root policy and sends it to the current watch.
func (s *policySource) setRoot(p *v1alpha1.AuthorizationPolicy) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.root = p
	if s.watcher == nil {
		return fmt.Errorf("scale: the policy informer has no watch open")
	}
	s.watcher.Modify(p.DeepCopy())
	return nil
}
