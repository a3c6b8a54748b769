package netnstest

import (
	"os"
	"path/filepath"
	"testing"
)

// SelfCopy copies the running test binary where any user can run it and
// returns the copy's path, for a test that runs itself in another role as
// an unprivileged user (NS.Command with a uid), as a pod's container runs.
// The binary go test builds sits in a build directory only root can enter,
// so another uid cannot run it in place; t.TempDir is no help either, as
// its parent is private too. The copy is removed when the test ends.
func SelfCopy(t testing.TB) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "mesh-self-")
	if err != nil {
		t.Fatalf("netnstest: copy the test binary: %v", err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	dst := filepath.Join(dir, "app")
	if err := copySelf(dir, dst); err != nil {
		t.Fatalf("netnstest: copy the test binary: %v", err)
	}
	return dst
}

func copySelf(dir, dst string) error {
	// MkdirTemp made dir 0700.
	if err := os.Chmod(dir, 0o755); err != nil {
		return err
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	b, err := os.ReadFile(self)
	if err != nil {
		return err
	}
	return os.WriteFile(dst, b, 0o755)
}
