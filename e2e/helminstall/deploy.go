package helminstall

import (
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// EchoApp is one Deployment of the echo app that DeployEcho runs.
type EchoApp struct {
	// Name is the ServiceAccount's, the Deployment's and the pods' app
	// label: the pods' SPIFFE ID is spiffe://cluster.local/ns/<ns>/sa/<Name>.
	Name     string
	Replicas int32
	// Service adds a Service of the same name selecting the pods, on the
	// echo app's HTTP port 8080.
	Service bool
}

// DeployEcho creates in namespace ns, for each app, its ServiceAccount, a
// Deployment of the echo app with its readiness probe, and its Service if
// asked; then it waits up to three minutes for every rollout, so that in a
// namespace labelled for injection each pod's proxy is ready when it
// returns. All are created before any is waited for, so they roll out
// together.
func (m *Mesh) DeployEcho(t *testing.T, ns string, apps ...EchoApp) {
	t.Helper()
	ctx := t.Context()
	for _, a := range apps {
		if _, err := m.Kube.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: a.Name}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		d := Deployment(ns, a.Name, a.Replicas, PodTemplate(a.Name, Echo(true), corev1.RestartPolicyAlways))
		if _, err := m.Kube.AppsV1().Deployments(ns).Create(ctx, d, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		if !a.Service {
			continue
		}
		if _, err := m.Kube.CoreV1().Services(ns).Create(ctx, &corev1.Service{
			ObjectMeta: metav1.ObjectMeta{Name: a.Name},
			Spec:       corev1.ServiceSpec{Selector: map[string]string{"app": a.Name}, Ports: []corev1.ServicePort{{Name: "http", Port: 8080, TargetPort: intstr.FromInt32(8080)}}},
		}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	for _, a := range apps {
		m.MustRun(t, "kubectl", "rollout", "status", "-n", ns, "deployment/"+a.Name, "--timeout", "3m")
	}
}
