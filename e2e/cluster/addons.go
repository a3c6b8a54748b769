package cluster

import (
	"context"
	"fmt"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/util/retry"
)

// The DNS add-on: CoreDNS as a pod, as kubeadm installs it.
const (
	// ClusterDNS is the kube-dns Service's ClusterIP, where the node agent
	// points pods' resolv.conf.
	ClusterDNS = "198.18.192.10"
	// ClusterDomain is the suffix of in-cluster names.
	ClusterDomain = "cluster.local"
	// CoreDNSImage maps, on the node agent, to .cache/bin/coredns.
	CoreDNSImage = "mesh-e2e/coredns"
)

// Corefile serves cluster.local (and the reverse zone of the pod network)
// from the API server, and nothing else: there is no forward plugin, so a
// query for any other name is refused and none leaves the pod network.
// The kubernetes plugin talks to the API server with the pod's in-cluster
// config. Health is on :8080, readiness on :8181, inside the pod's own
// network namespace.
const Corefile = `cluster.local:53 18.198.in-addr.arpa:53 {
    errors
    health {
        lameduck 2s
    }
    ready
    kubernetes cluster.local 18.198.in-addr.arpa {
        pods insecure
        ttl 5
    }
    cache 5
    reload 2s
}
`

// installAddons creates (or brings up to date) the cluster's add-ons in
// kube-system. They run once a node agent is there to run them.
func installAddons(ctx context.Context, cs kubernetes.Interface) error {
	const ns = metav1.NamespaceSystem
	labels := map[string]string{"k8s-app": "kube-dns"}
	steps := []struct {
		what  string
		apply func() error
	}{
		{"ServiceAccount coredns", func() error {
			_, err := cs.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "coredns"}}, metav1.CreateOptions{})
			return ignoreExists(err)
		}},
		{"ClusterRole system:coredns", func() error {
			cr := &rbacv1.ClusterRole{
				ObjectMeta: metav1.ObjectMeta{Name: "system:coredns"},
				// What the kubernetes plugin watches to answer.
				Rules: []rbacv1.PolicyRule{
					{APIGroups: []string{""}, Resources: []string{"endpoints", "services", "pods", "namespaces"}, Verbs: []string{"list", "watch"}},
					{APIGroups: []string{"discovery.k8s.io"}, Resources: []string{"endpointslices"}, Verbs: []string{"list", "watch"}},
				},
			}
			_, err := cs.RbacV1().ClusterRoles().Create(ctx, cr, metav1.CreateOptions{})
			if apierrors.IsAlreadyExists(err) {
				_, err = cs.RbacV1().ClusterRoles().Update(ctx, cr, metav1.UpdateOptions{})
			}
			return err
		}},
		{"ClusterRoleBinding system:coredns", func() error {
			_, err := cs.RbacV1().ClusterRoleBindings().Create(ctx, &rbacv1.ClusterRoleBinding{
				ObjectMeta: metav1.ObjectMeta{Name: "system:coredns"},
				RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: "system:coredns"},
				Subjects:   []rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Name: "coredns", Namespace: ns}},
			}, metav1.CreateOptions{})
			return ignoreExists(err)
		}},
		{"ConfigMap coredns", func() error {
			cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "coredns"}, Data: map[string]string{"Corefile": Corefile}}
			_, err := cs.CoreV1().ConfigMaps(ns).Create(ctx, cm, metav1.CreateOptions{})
			if apierrors.IsAlreadyExists(err) {
				_, err = cs.CoreV1().ConfigMaps(ns).Update(ctx, cm, metav1.UpdateOptions{})
			}
			return err
		}},
		{"Service kube-dns", func() error {
			want := corev1.ServiceSpec{
				ClusterIP: ClusterDNS, Selector: labels,
				Ports: []corev1.ServicePort{
					{Name: "dns", Port: 53, Protocol: corev1.ProtocolUDP, TargetPort: intstr.FromInt32(53)},
					{Name: "dns-tcp", Port: 53, Protocol: corev1.ProtocolTCP, TargetPort: intstr.FromInt32(53)},
				},
			}
			// Looked up first: creating it again fails on its ClusterIP
			// (taken, by itself) before the name is checked.
			cur, err := cs.CoreV1().Services(ns).Get(ctx, "kube-dns", metav1.GetOptions{})
			if apierrors.IsNotFound(err) {
				_, err = cs.CoreV1().Services(ns).Create(ctx, &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "kube-dns", Labels: labels}, Spec: want}, metav1.CreateOptions{})
				return err
			}
			if err != nil {
				return err
			}
			cur.Spec.Selector, cur.Spec.Ports = want.Selector, want.Ports
			_, err = cs.CoreV1().Services(ns).Update(ctx, cur, metav1.UpdateOptions{})
			return err
		}},
		{"Deployment coredns", func() error {
			d := coreDNSDeployment(labels)
			_, err := cs.AppsV1().Deployments(ns).Create(ctx, d, metav1.CreateOptions{})
			if apierrors.IsAlreadyExists(err) {
				cur, gerr := cs.AppsV1().Deployments(ns).Get(ctx, d.Name, metav1.GetOptions{})
				if gerr != nil {
					return gerr
				}
				cur.Spec = d.Spec
				_, err = cs.AppsV1().Deployments(ns).Update(ctx, cur, metav1.UpdateOptions{})
			}
			return err
		}},
	}
	for _, s := range steps {
		// A read-modify-write races the controllers that update what it
		// read (the Deployment's status): read again and retry.
		if err := retry.RetryOnConflict(retry.DefaultRetry, s.apply); err != nil {
			return fmt.Errorf("cluster: add-on %s: %w", s.what, err)
		}
	}
	return nil
}

func coreDNSDeployment(labels map[string]string) *appsv1.Deployment {
	replicas := int32(1)
	grace := int64(5)
	probe := func(path string, port int32) *corev1.Probe {
		return &corev1.Probe{
			ProbeHandler:  corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: path, Port: intstr.FromInt32(port)}},
			PeriodSeconds: 2, FailureThreshold: 5,
		}
	}
	return &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: "coredns", Labels: labels},
		Spec: appsv1.DeploymentSpec{
			Replicas: &replicas,
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec: corev1.PodSpec{
					ServiceAccountName: "coredns",
					// The node's resolver, not itself: CoreDNS never
					// forwards anyway, but a pod pointing at its own
					// Service would loop.
					DNSPolicy:                     corev1.DNSDefault,
					PriorityClassName:             "system-cluster-critical",
					TerminationGracePeriodSeconds: &grace,
					Containers: []corev1.Container{{
						Name:  "coredns",
						Image: CoreDNSImage,
						// Under /run: the node has no /etc/coredns, and a
						// mount path the node lacks is made on a tmpfs laid
						// over its nearest existing parent (/etc would hide
						// the node's).
						Args:         []string{"-conf", "/run/coredns/Corefile"},
						VolumeMounts: []corev1.VolumeMount{{Name: "config", MountPath: "/run/coredns", ReadOnly: true}},
						Ports: []corev1.ContainerPort{
							{Name: "dns", ContainerPort: 53, Protocol: corev1.ProtocolUDP},
							{Name: "dns-tcp", ContainerPort: 53, Protocol: corev1.ProtocolTCP},
						},
						ReadinessProbe: probe("/ready", 8181),
						LivenessProbe:  probe("/health", 8080),
						SecurityContext: &corev1.SecurityContext{
							AllowPrivilegeEscalation: ptr(false),
							Capabilities:             &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}, Add: []corev1.Capability{"NET_BIND_SERVICE"}},
						},
					}},
					Volumes: []corev1.Volume{{Name: "config", VolumeSource: corev1.VolumeSource{ConfigMap: &corev1.ConfigMapVolumeSource{
						LocalObjectReference: corev1.LocalObjectReference{Name: "coredns"},
					}}}},
				},
			},
		},
	}
}

func ignoreExists(err error) error {
	if apierrors.IsAlreadyExists(err) {
		return nil
	}
	return err
}

func ptr[T any](v T) *T { return &v }
