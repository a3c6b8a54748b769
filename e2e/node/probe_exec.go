package node

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"time"

	corev1 "k8s.io/api/core/v1"
)

// execProbe runs an exec probe's command in the container, as the kubelet
// does: in the mount and network namespaces of the container's process
// pid, as its user, with its environment (read from the process, so it is
// the one the container started with). Exit status 0 is a success.
func execProbe(ctx context.Context, pid int, sc *corev1.SecurityContext, p *corev1.Probe) error {
	if len(p.Exec.Command) == 0 {
		return errors.New("node: exec probe has no command")
	}
	environ, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", pid))
	if err != nil {
		return fmt.Errorf("node: exec probe: the container's environment: %w", err)
	}
	timeout := time.Duration(max(p.TimeoutSeconds, 1)) * time.Second
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	args := []string{"-t", strconv.Itoa(pid), "-m", "-n", "--"}
	if sc != nil && sc.RunAsUser != nil && *sc.RunAsUser != 0 {
		gid := *sc.RunAsUser
		if sc.RunAsGroup != nil {
			gid = *sc.RunAsGroup
		}
		args = append(args, "setpriv", "--reuid", strconv.FormatInt(*sc.RunAsUser, 10), "--regid", strconv.FormatInt(gid, 10), "--clear-groups", "--")
	}
	args = append(args, p.Exec.Command...)
	cmd := exec.CommandContext(ctx, "nsenter", args...)
	cmd.Env = nil
	for _, kv := range bytes.Split(environ, []byte{0}) {
		if len(kv) > 0 {
			cmd.Env = append(cmd.Env, string(kv))
		}
	}
	// nsenter and setpriv exec the command: killing the process at the
	// timeout ends it.
	cmd.WaitDelay = time.Second
	out, err := cmd.CombinedOutput()
	if ctx.Err() != nil {
		return fmt.Errorf("node: exec probe %q: timed out after %s", p.Exec.Command, timeout)
	}
	if err != nil {
		return fmt.Errorf("node: exec probe %q: %w: %s", p.Exec.Command, err, bytes.TrimSpace(clip(out, 256)))
	}
	return nil
}

func clip(b []byte, n int) []byte {
	if len(b) > n {
		return b[:n]
	}
	return b
}
