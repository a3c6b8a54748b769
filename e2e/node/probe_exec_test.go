package node

import (
	"context"
	"os/exec"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/mesh-dev/mesh/e2e/prereq"
)

// TestExecProbe: an exec probe runs in a real process's namespaces, with
// its environment and as the container's user; its exit status is the
// verdict, and its timeout is kept.
func TestExecProbe(t *testing.T) {
	prereq.Root(t)
	// The "container": a process with an environment of its own.
	proc := exec.Command("sleep", "60")
	proc.Env = []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "APP_MODE=ready"}
	if err := proc.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = proc.Process.Kill(); _ = proc.Wait() }()
	pid := proc.Process.Pid
	uid := int64(1000)
	probe := func(timeout int32, cmd ...string) *corev1.Probe {
		return &corev1.Probe{TimeoutSeconds: timeout, ProbeHandler: corev1.ProbeHandler{Exec: &corev1.ExecAction{Command: cmd}}}
	}
	for _, tc := range []struct {
		name  string
		sc    *corev1.SecurityContext
		probe *corev1.Probe
		err   string
	}{
		{"exit 0", nil, probe(1, "true"), ""},
		{"exit 1", nil, probe(1, "sh", "-c", "echo not yet; exit 1"), "exit status 1: not yet"},
		{"the container's environment", nil, probe(1, "sh", "-c", `test "$APP_MODE" = ready && test -z "$HOME"`), ""},
		{"the container's user", &corev1.SecurityContext{RunAsUser: &uid}, probe(1, "sh", "-c", `test "$(id -u)" = 1000`), ""},
		{"root by default", nil, probe(1, "sh", "-c", `test "$(id -u)" = 0`), ""},
		{"no such command", nil, probe(1, "no-such-command-here"), "exit status"},
		{"no command", nil, probe(1), "exec probe has no command"},
		{"timeout", nil, probe(1, "sleep", "10"), "timed out after 1s"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			start := time.Now()
			err := execProbe(context.Background(), pid, tc.sc, tc.probe)
			if tc.err == "" && err != nil {
				t.Fatalf("execProbe = %v, want success", err)
			}
			if tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)) {
				t.Fatalf("execProbe = %v, want an error containing %q", err, tc.err)
			}
			if el := time.Since(start); el > 3*time.Second {
				t.Fatalf("execProbe took %s", el)
			}
		})
	}
	// A process that is gone has no namespaces to run in.
	gone := exec.Command("true")
	if err := gone.Run(); err != nil {
		t.Fatal(err)
	}
	if err := execProbe(context.Background(), gone.Process.Pid, nil, probe(1, "true")); err == nil {
		t.Fatal("an exec probe of a process that has exited passed")
	}
}
