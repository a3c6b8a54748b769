package charts

import (
	"slices"
	"testing"

	corev1 "k8s.io/api/core/v1"
)

// TestContainersHardened: every container the chart runs is non-root, with
// a read-only root filesystem, no privilege escalation, every capability
// dropped and none added, and the RuntimeDefault seccomp profile; no pod
// shares the host's namespaces.
func TestContainersHardened(t *testing.T) {
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			o := decode(t, mustRender(t, c.file))
			if len(o.deployments) == 0 {
				t.Fatal("no Deployment rendered")
			}
			for _, d := range o.deployments {
				spec := d.Spec.Template.Spec
				if spec.HostNetwork || spec.HostPID || spec.HostIPC {
					t.Errorf("%s shares the host's namespaces", d.Name)
				}
				all := append(slices.Clone(spec.InitContainers), spec.Containers...)
				for _, ctr := range all {
					for _, problem := range hardeningProblems(spec.SecurityContext, ctr) {
						t.Errorf("%s/%s: %s", d.Name, ctr.Name, problem)
					}
				}
			}
		})
	}
}

// hardeningProblems lists what is wrong with a container's effective
// security context (the container's, falling back to the pod's).
func hardeningProblems(pod *corev1.PodSecurityContext, c corev1.Container) []string {
	if pod == nil {
		pod = &corev1.PodSecurityContext{}
	}
	sc := c.SecurityContext
	if sc == nil {
		sc = &corev1.SecurityContext{}
	}
	var problems []string
	runAsNonRoot, runAsUser := sc.RunAsNonRoot, sc.RunAsUser
	if runAsNonRoot == nil {
		runAsNonRoot = pod.RunAsNonRoot
	}
	if runAsUser == nil {
		runAsUser = pod.RunAsUser
	}
	if runAsNonRoot == nil || !*runAsNonRoot {
		problems = append(problems, "runAsNonRoot is not true")
	}
	// A numeric UID, so the kubelet can check runAsNonRoot without reading
	// the image, and not root.
	if runAsUser == nil || *runAsUser == 0 {
		problems = append(problems, "runAsUser is unset or 0")
	}
	if sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
		problems = append(problems, "readOnlyRootFilesystem is not true")
	}
	if sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
		problems = append(problems, "allowPrivilegeEscalation is not false")
	}
	if sc.Privileged != nil && *sc.Privileged {
		problems = append(problems, "privileged")
	}
	if sc.Capabilities == nil || !slices.Contains(sc.Capabilities.Drop, "ALL") {
		problems = append(problems, "capabilities do not drop ALL")
	} else if len(sc.Capabilities.Add) != 0 {
		problems = append(problems, "capabilities added")
	}
	seccomp := sc.SeccompProfile
	if seccomp == nil {
		seccomp = pod.SeccompProfile
	}
	if seccomp == nil || seccomp.Type != corev1.SeccompProfileTypeRuntimeDefault {
		problems = append(problems, "seccomp profile is not RuntimeDefault")
	}
	return problems
}

// TestHardeningProblems: the check itself finds each weakness, so
// TestContainersHardened cannot pass by checking nothing.
func TestHardeningProblems(t *testing.T) {
	yes, no := true, false
	root, user := int64(0), int64(65532)
	good := func() corev1.Container {
		return corev1.Container{Name: "c", SecurityContext: &corev1.SecurityContext{
			RunAsNonRoot: &yes, RunAsUser: &user, ReadOnlyRootFilesystem: &yes, AllowPrivilegeEscalation: &no,
			Capabilities:   &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
			SeccompProfile: &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault},
		}}
	}
	if p := hardeningProblems(nil, good()); len(p) != 0 {
		t.Fatalf("a hardened container has problems: %v", p)
	}
	for _, c := range []struct {
		name   string
		break_ func(*corev1.SecurityContext)
	}{
		{"no runAsNonRoot", func(s *corev1.SecurityContext) { s.RunAsNonRoot = nil }},
		{"runAsNonRoot false", func(s *corev1.SecurityContext) { s.RunAsNonRoot = &no }},
		{"root", func(s *corev1.SecurityContext) { s.RunAsUser = &root }},
		{"no user", func(s *corev1.SecurityContext) { s.RunAsUser = nil }},
		{"writable root", func(s *corev1.SecurityContext) { s.ReadOnlyRootFilesystem = &no }},
		{"escalation", func(s *corev1.SecurityContext) { s.AllowPrivilegeEscalation = nil }},
		{"privileged", func(s *corev1.SecurityContext) { s.Privileged = &yes }},
		{"capabilities kept", func(s *corev1.SecurityContext) { s.Capabilities.Drop = []corev1.Capability{"NET_RAW"} }},
		{"capability added", func(s *corev1.SecurityContext) { s.Capabilities.Add = []corev1.Capability{"NET_ADMIN"} }},
		{"unconfined", func(s *corev1.SecurityContext) { s.SeccompProfile.Type = corev1.SeccompProfileTypeUnconfined }},
	} {
		ctr := good()
		c.break_(ctr.SecurityContext)
		if p := hardeningProblems(nil, ctr); len(p) == 0 {
			t.Errorf("%s: not found", c.name)
		}
	}
	// The pod's settings count where the container has none.
	ctr := good()
	ctr.SecurityContext.RunAsNonRoot, ctr.SecurityContext.RunAsUser, ctr.SecurityContext.SeccompProfile = nil, nil, nil
	pod := &corev1.PodSecurityContext{RunAsNonRoot: &yes, RunAsUser: &user, SeccompProfile: &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault}}
	if p := hardeningProblems(pod, ctr); len(p) != 0 {
		t.Errorf("pod-level settings not counted: %v", p)
	}
}
