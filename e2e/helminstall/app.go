package helminstall

import (
	"bytes"
	"context"
	"fmt"
	"math/big"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/mesh-dev/mesh/e2e/meshtest"
	"github.com/mesh-dev/mesh/e2e/prereq"
)

// PodTemplate runs c as a non-root app container (uid 1000, as the
// injector requires for the Workload API) under the ServiceAccount name,
// labelled app=name, with POD_NAME in its environment.
func PodTemplate(name string, c corev1.Container, restart corev1.RestartPolicy) corev1.PodTemplateSpec {
	uid, nonRoot, grace := int64(1000), true, int64(5)
	c.SecurityContext = &corev1.SecurityContext{RunAsUser: &uid, RunAsNonRoot: &nonRoot}
	c.Env = append(c.Env, corev1.EnvVar{Name: "POD_NAME", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.name"}}})
	return corev1.PodTemplateSpec{
		ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{"app": name}},
		Spec: corev1.PodSpec{
			ServiceAccountName: name, RestartPolicy: restart, TerminationGracePeriodSeconds: &grace,
			Containers: []corev1.Container{c},
		},
	}
}

// Echo is the e2e echo app's container, serving HTTP on 8080; with probe,
// a readiness probe the injector rewrites to the proxy's admin port.
func Echo(probe bool) corev1.Container {
	c := corev1.Container{Name: "app", Image: "mesh-e2e/echo", Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}}}
	if probe {
		c.ReadinessProbe = &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/live", Port: intstr.FromInt32(8080)}}, PeriodSeconds: 1}
	}
	return c
}

// Deployment of replicas pods of tmpl, selected by its app label.
func Deployment(ns, name string, replicas int32, tmpl corev1.PodTemplateSpec) *appsv1.Deployment {
	return &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Spec: appsv1.DeploymentSpec{
			Replicas: &replicas, Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": name}}, Template: tmpl,
		},
	}
}

// InPod runs the echo app's client mode in pod ns/name for at most bound,
// and returns its standard output (where load modes print JSON), or with
// an error its standard error too.
func InPod(ctx context.Context, bound time.Duration, ns, pod string, args ...string) (string, error) {
	cctx, cancel := context.WithTimeout(ctx, bound)
	defer cancel()
	cmd := meshtest.InPod(cctx, ns, pod, append([]string{filepath.Join(prereq.BinDir(), "mesh-e2e-echo")}, args...)...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return string(out) + stderr.String(), err
	}
	return string(out), nil
}

// WireSerial is the serial of the certificate a TLS server at addr
// presents, read with openssl s_client from the network namespace netns
// (the handshake itself may then fail: s_client sends no certificate).
func WireSerial(ctx context.Context, netns, addr string) (*big.Int, error) {
	cctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	sh := fmt.Sprintf("openssl s_client -connect %s -alpn mesh/1 </dev/null 2>/dev/null | openssl x509 -noout -serial", addr)
	out, err := exec.CommandContext(cctx, "ip", "netns", "exec", netns, "sh", "-c", sh).CombinedOutput()
	if err != nil {
		return nil, fmt.Errorf("openssl s_client to %s from %s: %w: %s", addr, netns, err, out)
	}
	hex, ok := strings.CutPrefix(strings.TrimSpace(string(out)), "serial=")
	n, ok2 := new(big.Int).SetString(hex, 16)
	if !ok || !ok2 {
		return nil, fmt.Errorf("openssl s_client to %s: no serial in %q", addr, out)
	}
	return n, nil
}
