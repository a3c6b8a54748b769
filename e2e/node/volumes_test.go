package node

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// TestShellQuote: what a pod names (mount paths) reaches the mount script
// as one word, never as a command: sh prints each back unchanged, and the
// command substitutions in them do not run.
func TestShellQuote(t *testing.T) {
	marker := filepath.Join(t.TempDir(), "ran")
	for _, s := range []string{
		"/plain/path", "/with space", "/$(touch " + marker + ")", "/`touch " + marker + "`", "/it's", "/''", `/back\slash`,
		"/a\nb", "/$HOME", "/;touch " + marker, "/\"quoted\"", "", "'", "/ü",
	} {
		out, err := exec.Command("sh", "-c", "printf %s "+shellQuote(s)).Output()
		if err != nil || string(out) != s {
			t.Errorf("sh printed %q, %v; want %q", out, err, s)
		}
	}
	if _, err := os.Stat(marker); err == nil {
		t.Fatal("a quoted path ran a command")
	}
}

// TestMountScriptRefuses: mount paths and subPaths that would leave their
// place are refused before any script runs.
func TestMountScriptRefuses(t *testing.T) {
	n := &Node{cfg: Config{Dir: t.TempDir()}}
	p := podWithVolume("v")
	if err := os.MkdirAll(n.volumeDir(p, "v"), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ mountPath, subPath, err string }{
		{"relative/path", "", `mountPath "relative/path" is not an absolute path`},
		{"/tmp/../etc", "", `mountPath "/tmp/../etc" is not an absolute path`},
		{"/tmp/x", "../../../../etc", `subPath "../../../../etc" leaves the volume`},
		{"/tmp/x", "../other", `subPath "../other" leaves the volume`},
		{"/no-such-top-dir/x", "", "only a path under an existing directory of the node can be made"},
	} {
		c := p.Spec.Containers[0]
		c.VolumeMounts[0].MountPath, c.VolumeMounts[0].SubPath = tc.mountPath, tc.subPath
		if _, err := n.mountScript(p, c); err == nil || !strings.Contains(err.Error(), tc.err) {
			t.Errorf("mountScript(%q, subPath %q) = %v, want %q", tc.mountPath, tc.subPath, err, tc.err)
		}
	}
}

func podWithVolume(name string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "p", Namespace: "ns", UID: "uid-1"},
		Spec: corev1.PodSpec{
			Volumes:    []corev1.Volume{{Name: name, VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}}},
			Containers: []corev1.Container{{Name: "c", VolumeMounts: []corev1.VolumeMount{{Name: name}}}},
		},
	}
}
