package main

import (
	"context"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestBuildMeshProxy: the benchmark measures mesh-proxy as it ships, built
// with the Makefile's grpcnotrace tag; go version -m reads the build
// settings back from the binary.
func TestBuildMeshProxy(t *testing.T) {
	if testing.Short() {
		t.Skip("builds mesh-proxy")
	}
	bin := filepath.Join(t.TempDir(), "mesh-proxy")
	if err := buildMeshProxy(context.Background(), bin); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("go", "version", "-m", bin).CombinedOutput()
	if err != nil {
		t.Fatalf("go version -m: %v\n%s", err, out)
	}
	settings := map[string]string{}
	var lines []string
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) == 2 && f[0] == "build" {
			k, v, _ := strings.Cut(f[1], "=")
			settings[k] = v
			lines = append(lines, f[1])
		}
	}
	for k, want := range map[string]string{"-tags": "grpcnotrace", "-trimpath": "true"} {
		if settings[k] != want {
			t.Errorf("mesh-proxy built with %s=%q, want %q (build settings: %s)", k, settings[k], want, strings.Join(lines, " "))
		}
	}
}
