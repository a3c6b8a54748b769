package cluster_test

import (
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/mesh-dev/mesh/e2e/cluster"
	"github.com/mesh-dev/mesh/e2e/clustertest"
)

// TestAddons: Start creates the DNS add-on in kube-system (CoreDNS with no
// forward plugin, the kube-dns Service on its fixed ClusterIP, not pointing
// at itself), and running the step again restores what was changed and
// duplicates nothing.
func TestAddons(t *testing.T) {
	c := clustertest.Get(t)
	cs, ctx := c.Client(), t.Context()
	check := func(t *testing.T) {
		t.Helper()
		svc, err := cs.CoreV1().Services(metav1.NamespaceSystem).Get(ctx, "kube-dns", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		ports := map[corev1.Protocol]int32{}
		for _, p := range svc.Spec.Ports {
			ports[p.Protocol] = p.Port
		}
		if svc.Spec.ClusterIP != cluster.ClusterDNS || ports[corev1.ProtocolUDP] != 53 || ports[corev1.ProtocolTCP] != 53 || len(ports) != 2 {
			t.Errorf("kube-dns = %s %v, want %s on 53/UDP and 53/TCP", svc.Spec.ClusterIP, svc.Spec.Ports, cluster.ClusterDNS)
		}
		cm, err := cs.CoreV1().ConfigMaps(metav1.NamespaceSystem).Get(ctx, "coredns", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if cm.Data["Corefile"] != cluster.Corefile {
			t.Errorf("Corefile =\n%s\nwant\n%s", cm.Data["Corefile"], cluster.Corefile)
		}
		ds, err := cs.AppsV1().Deployments(metav1.NamespaceSystem).List(ctx, metav1.ListOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if len(ds.Items) != 1 || ds.Items[0].Name != "coredns" {
			t.Fatalf("kube-system Deployments = %d, want coredns alone", len(ds.Items))
		}
		spec := ds.Items[0].Spec.Template.Spec
		if spec.DNSPolicy != corev1.DNSDefault || spec.ServiceAccountName != "coredns" || spec.Containers[0].Image != cluster.CoreDNSImage {
			t.Errorf("coredns pod: dnsPolicy %s, serviceAccount %s, image %s", spec.DNSPolicy, spec.ServiceAccountName, spec.Containers[0].Image)
		}
		crb, err := cs.RbacV1().ClusterRoleBindings().Get(ctx, "system:coredns", metav1.GetOptions{})
		if err != nil || crb.RoleRef.Name != "system:coredns" || len(crb.Subjects) != 1 || crb.Subjects[0].Name != "coredns" || crb.Subjects[0].Namespace != "kube-system" {
			t.Errorf("ClusterRoleBinding system:coredns = %+v, %v", crb, err)
		}
	}
	check(t)
	// Nothing in the Corefile may send a query off the pod network.
	for _, plugin := range []string{"forward", "proxy", "grpc"} {
		if strings.Contains(cluster.Corefile, plugin) {
			t.Errorf("the Corefile uses %s", plugin)
		}
	}

	cm, err := cs.CoreV1().ConfigMaps(metav1.NamespaceSystem).Get(ctx, "coredns", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	cm.Data["Corefile"] = ". {\n    forward . 192.0.2.1\n}\n"
	if _, err := cs.CoreV1().ConfigMaps(metav1.NamespaceSystem).Update(ctx, cm, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := cluster.InstallAddons(ctx, cs); err != nil {
		t.Fatalf("the add-on step again: %v", err)
	}
	check(t)
}
