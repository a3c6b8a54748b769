package inject_test

import (
	"errors"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"

	"github.com/mesh-dev/mesh/inject"
)

// spiffeApp is web with the workload API asked for, the pod running as
// 1000 and a second container as 1001 by its own securityContext, and an
// init container (not an app container: it gets nothing).
func spiffeApp() *corev1.Pod {
	pod := web()
	pod.Annotations = map[string]string{inject.WorkloadAPI: inject.Enabled}
	pod.Spec.SecurityContext = &corev1.PodSecurityContext{RunAsUser: ptrTo(int64(1000))}
	pod.Spec.Containers[0].Env = []corev1.EnvVar{{Name: "LANG", Value: "C"}}
	pod.Spec.Containers = append(pod.Spec.Containers, corev1.Container{
		Name: "worker", Image: "worker:1", SecurityContext: &corev1.SecurityContext{RunAsUser: ptrTo(int64(1001))},
		VolumeMounts: []corev1.VolumeMount{{Name: "data", MountPath: "/data"}},
	}, corev1.Container{Name: "web2", Image: "web:1"}) // the pod's 1000 again
	pod.Spec.InitContainers = []corev1.Container{{Name: "migrate", Image: "migrate:1"}}
	pod.Spec.Volumes = []corev1.Volume{{Name: "data"}}
	return pod
}

// TestWorkloadAPI: the socket's emptyDir in memory, mounted read-write in
// the proxy and read-only in every app container, SPIFFE_ENDPOINT_SOCKET
// in the app containers, and the proxy told the socket and the app
// containers' UIDs.
func TestWorkloadAPI(t *testing.T) {
	in := newInjector(t, inject.Config{})
	pod := spiffeApp()
	res, err := in.Inject(pod, labelled)
	if err != nil {
		t.Fatal(err)
	}
	got := apply(t, pod, res.Patch)

	var vol *corev1.Volume
	for i := range got.Spec.Volumes {
		if got.Spec.Volumes[i].Name == "mesh-workload-api" {
			vol = &got.Spec.Volumes[i]
		}
	}
	if vol == nil || vol.EmptyDir == nil || vol.EmptyDir.Medium != corev1.StorageMediumMemory {
		t.Fatalf("volume %+v, want a memory emptyDir", vol)
	}
	mountOf := func(c *corev1.Container) (corev1.VolumeMount, int) {
		var m corev1.VolumeMount
		n := 0
		for _, vm := range c.VolumeMounts {
			if vm.Name == "mesh-workload-api" {
				m, n = vm, n+1
			}
		}
		return m, n
	}
	px := find(got.Spec.InitContainers, "mesh-proxy")
	if m, n := mountOf(px); n != 1 || m.MountPath != "/run/spiffe/workload" || m.ReadOnly {
		t.Errorf("proxy mount %+v (%d), want /run/spiffe/workload read-write", m, n)
	}
	for flag, want := range map[string]string{"--workload-api-socket": "/run/spiffe/workload/socket", "--workload-api-uids": "1000,1001"} {
		if v, _ := argOf(px.Args, flag); v != want {
			t.Errorf("mesh-proxy %s = %q, want %q", flag, v, want)
		}
	}
	for _, c := range got.Spec.Containers {
		if m, n := mountOf(&c); n != 1 || m.MountPath != "/run/spiffe/workload" || !m.ReadOnly {
			t.Errorf("container %s mount %+v (%d), want /run/spiffe/workload read-only", c.Name, m, n)
		}
		if e, ok := envOf(&c, "SPIFFE_ENDPOINT_SOCKET"); !ok || e.Value != "unix:///run/spiffe/workload/socket" {
			t.Errorf("container %s SPIFFE_ENDPOINT_SOCKET = %+v", c.Name, e)
		}
	}
	if e, _ := envOf(&got.Spec.Containers[0], "LANG"); e.Value != "C" || got.Spec.Containers[1].VolumeMounts[0].Name != "data" {
		t.Error("the app's own env or mounts were changed")
	}
	for _, c := range append(slices.Clone(got.Spec.InitContainers), corev1.Container{}) {
		if c.Name == "mesh-proxy" {
			continue
		}
		if _, n := mountOf(&c); n != 0 {
			t.Errorf("%s (not an app container) mounts the socket", c.Name)
		}
		if _, ok := envOf(&c, "SPIFFE_ENDPOINT_SOCKET"); ok {
			t.Errorf("%s (not an app container) has SPIFFE_ENDPOINT_SOCKET", c.Name)
		}
	}

	// Idempotent, and deterministic.
	if again, err := in.Inject(got, labelled); err != nil || again.Patch != nil {
		t.Errorf("second injection: %v %+v", err, again)
	}
	if res2, _ := in.Inject(spiffeApp(), labelled); string(res2.Patch) != string(res.Patch) {
		t.Error("the same pod gives a different patch")
	}

	// Without the annotation: nothing of it.
	plain := spiffeApp()
	delete(plain.Annotations, inject.WorkloadAPI)
	res, err = in.Inject(plain, labelled)
	if err != nil {
		t.Fatal(err)
	}
	if s := string(res.Patch); strings.Contains(s, "workload") || strings.Contains(s, "SPIFFE_ENDPOINT_SOCKET") {
		t.Errorf("patch without the annotation mentions the workload API: %s", s)
	}
}

// TestWorkloadAPIRefused: pods the socket cannot be shared with safely.
func TestWorkloadAPIRefused(t *testing.T) {
	in := newInjector(t, inject.Config{ProxyUID: 2102})
	with := func(f func(*corev1.Pod)) *corev1.Pod { p := spiffeApp(); f(p); return p }
	tests := []struct {
		name    string
		pod     *corev1.Pod
		refused string // "" means injected, with uids
		uids    string
	}{
		{"container without uid, pod without", with(func(p *corev1.Pod) { p.Spec.SecurityContext = nil }), "container web declares no runAsUser", ""},
		{"pod uid, container overrides with root", with(func(p *corev1.Pod) {
			p.Spec.Containers[0].SecurityContext = &corev1.SecurityContext{RunAsUser: ptrTo(int64(0))}
		}), "", "0,1000,1001"},
		{"container as the proxy", with(func(p *corev1.Pod) {
			p.Spec.Containers[1].SecurityContext.RunAsUser = ptrTo(int64(2102))
		}), "container worker runs as the proxy's UID 2102", ""},
		{"pod as the proxy", with(func(p *corev1.Pod) { p.Spec.SecurityContext.RunAsUser = ptrTo(int64(2102)) }), "container web runs as the proxy's UID 2102", ""},
		{"endpoint already set", with(func(p *corev1.Pod) {
			p.Spec.Containers[0].Env = append(p.Spec.Containers[0].Env, corev1.EnvVar{Name: "SPIFFE_ENDPOINT_SOCKET", Value: "unix:///spire/agent.sock"})
		}), "container web already sets SPIFFE_ENDPOINT_SOCKET", ""},
		{"mount at the socket's directory", with(func(p *corev1.Pod) {
			p.Spec.Containers[1].VolumeMounts[0].MountPath = "/run/spiffe/workload"
		}), "container worker mounts data at /run/spiffe/workload", ""},
		{"mount over the socket's directory", with(func(p *corev1.Pod) {
			p.Spec.Containers[1].VolumeMounts[0].MountPath = "/run/"
		}), "over the socket's directory", ""},
		{"mount beside it", with(func(p *corev1.Pod) {
			p.Spec.Containers[1].VolumeMounts[0].MountPath = "/run/spiffe/workload-other"
		}), "", "1000,1001"},
		{"value with spaces", with(func(p *corev1.Pod) { p.Annotations[inject.WorkloadAPI] = " enabled" }), `" enabled" is not enabled or disabled`, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			res, err := in.Inject(tc.pod, labelled)
			var pe *inject.PodError
			switch {
			case tc.refused != "":
				if !errors.As(err, &pe) || pe.Field != inject.WorkloadAPI || !strings.Contains(err.Error(), tc.refused) {
					t.Fatalf("error %v, want a PodError on %s containing %q", err, inject.WorkloadAPI, tc.refused)
				}
			case err != nil:
				t.Fatal(err)
			default:
				got := apply(t, tc.pod, res.Patch)
				if v, _ := argOf(find(got.Spec.InitContainers, "mesh-proxy").Args, "--workload-api-uids"); v != tc.uids {
					t.Fatalf("--workload-api-uids %q, want %q", v, tc.uids)
				}
			}
		})
	}
}
