// Package prereq decides what a test does when something it needs from the
// machine is missing: root, a network namespace, a pinned tool.
//
// Under `make test` (MESH_E2E=require) a missing prerequisite fails the test,
// so CI can never pass by skipping. In a plain `go test` on a developer's
// laptop it skips the test with the reason.
package prereq

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// Required reports whether missing prerequisites must fail tests.
func Required() bool { return os.Getenv("MESH_E2E") == "require" }

func missing(t testing.TB, format string, args ...any) {
	t.Helper()
	msg := fmt.Sprintf(format, args...)
	if Required() {
		t.Fatalf("prerequisite missing (MESH_E2E=require): %s", msg)
	}
	t.Skipf("prerequisite missing: %s (run `make test` to require it)", msg)
}

// Root makes sure the test runs as root, which network namespaces, iptables
// and the local cluster's node need.
func Root(t testing.TB) {
	t.Helper()
	if testing.Short() {
		t.Skip("needs root; skipped in -short mode")
	}
	if os.Geteuid() != 0 {
		missing(t, "test needs root (network namespaces, iptables)")
	}
}

// Command returns the path of a system program, such as iptables or etcd.
func Command(t testing.TB, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		for _, dir := range []string{"/usr/sbin", "/sbin"} {
			if c := filepath.Join(dir, name); isExec(c) {
				return c
			}
		}
		missing(t, "program %q not found on PATH (run `make deps`)", name)
	}
	return p
}

// ToolsDir is the folder of the pinned programs built by `make tools`:
// $MESH_TOOLS_DIR, or .cache/bin at the repository root.
func ToolsDir() string {
	if d := os.Getenv("MESH_TOOLS_DIR"); d != "" {
		return d
	}
	return filepath.Join(RepoRoot(), ".cache", "bin")
}

// BinDir is the folder of mesh's own binaries built by `make build`:
// $MESH_BIN_DIR, or bin at the repository root.
func BinDir() string {
	if d := os.Getenv("MESH_BIN_DIR"); d != "" {
		return d
	}
	return filepath.Join(RepoRoot(), "bin")
}

// Tool returns the path of a pinned program (kube-apiserver, kubectl, helm...).
func Tool(t testing.TB, name string) string {
	t.Helper()
	p := filepath.Join(ToolsDir(), name)
	if !isExec(p) {
		missing(t, "tool %s not built (run `make tools`)", p)
	}
	return p
}

// Bin returns the path of one of mesh's own binaries (mesh-proxy...).
func Bin(t testing.TB, name string) string {
	t.Helper()
	p := filepath.Join(BinDir(), name)
	if !isExec(p) {
		missing(t, "binary %s not built (run `make build`)", p)
	}
	return p
}

// RepoRoot is the folder holding mesh's go.mod, found from the working
// directory (go test runs in the package's folder).
func RepoRoot() string {
	dir, err := os.Getwd()
	if err != nil {
		return "."
	}
	for d := dir; ; d = filepath.Dir(d) {
		if b, err := os.ReadFile(filepath.Join(d, "go.mod")); err == nil && isRootModule(b) {
			return d
		}
		if filepath.Dir(d) == d {
			return dir
		}
	}
}

func isRootModule(gomod []byte) bool {
	const want = "module github.com/mesh-dev/mesh\n"
	return len(gomod) >= len(want) && string(gomod[:len(want)]) == want
}

func isExec(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && !fi.IsDir() && fi.Mode()&0o111 != 0
}
