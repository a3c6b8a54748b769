package node

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestImage: the chart's, the tests' and the local images map to the
// binaries in BinDir (a mesh-e2e tool to ToolsDir when BinDir has no
// mesh-e2e-<tool>); tags and digests are ignored; anything else, and names
// that would reach outside the folders, fail with an error naming the
// mapping.
func TestImage(t *testing.T) {
	bin, tools := t.TempDir(), t.TempDir()
	for _, f := range []string{
		filepath.Join(bin, "mesh-controller"), filepath.Join(bin, "mesh-proxy"), filepath.Join(bin, "mesh-e2e-echo"),
		filepath.Join(bin, "meshctl"), filepath.Join(tools, "coredns"), filepath.Join(tools, "echo"),
	} {
		if err := os.WriteFile(f, []byte("#!/bin/sh\n"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(bin, "mesh-e2e-notexec"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	n := &Node{cfg: Config{BinDir: bin, ToolsDir: tools}}
	const unmapped = "is not mapped to a local binary (ghcr.io/mesh-dev/mesh-<x> runs $BinDir/mesh-<x>, mesh-e2e/<x> runs $BinDir/mesh-e2e-<x> or else $MESH_TOOLS_DIR/<x>, mesh/<x> runs $BinDir/<x>, mesh-e2e/tools runs the command from the node's PATH)"
	for _, tc := range []struct {
		image, want, err string
	}{
		{image: "ghcr.io/mesh-dev/mesh-controller:0.1.0", want: filepath.Join(bin, "mesh-controller")},
		{image: "ghcr.io/mesh-dev/mesh-proxy", want: filepath.Join(bin, "mesh-proxy")},
		{image: "ghcr.io/mesh-dev/mesh-proxy@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef", want: filepath.Join(bin, "mesh-proxy")},
		{image: "ghcr.io/mesh-dev/mesh-proxy:0.1.0@sha256:0123", want: filepath.Join(bin, "mesh-proxy")},
		{image: "mesh-e2e/echo:latest", want: filepath.Join(bin, "mesh-e2e-echo")}, // BinDir first, though ToolsDir has echo too
		{image: "mesh-e2e/coredns:1.12", want: filepath.Join(tools, "coredns")},
		{image: "mesh-e2e/tools", want: ""},
		{image: "mesh-e2e/tools:v1", want: ""},
		{image: "mesh/meshctl:dev", want: filepath.Join(bin, "meshctl")},
		{image: "nginx:1.27", err: `node: image "nginx:1.27" ` + unmapped},
		{image: "", err: `node: image "" ` + unmapped},
		{image: "ghcr.io/mesh-dev/other", err: unmapped},
		{image: "ghcr.io/mesh-dev/mesh-", err: unmapped},
		{image: "localhost:5000/mesh-e2e/echo", err: unmapped},
		{image: "docker.io/mesh-e2e/echo", err: unmapped},
		{image: "mesh-e2e/../../../bin/sh", err: unmapped},
		{image: "mesh-e2e/..", err: unmapped},
		{image: "mesh/sub/dir", err: unmapped},
		{image: "ghcr.io/mesh-dev/mesh-../../x", err: unmapped},
		{image: "mesh/Upper", err: unmapped},
		{image: "ghcr.io/mesh-dev/mesh-missing:1", err: `node: image "ghcr.io/mesh-dev/mesh-missing:1" maps to ` + filepath.Join(bin, "mesh-missing") + ", which is not built"},
		{image: "mesh-e2e/missing", err: "maps to " + filepath.Join(bin, "mesh-e2e-missing") + " or " + filepath.Join(tools, "missing") + ", which is not built"},
		{image: "mesh-e2e/notexec", err: "which is not built"},
	} {
		got, err := n.Image(tc.image)
		switch {
		case tc.err == "" && err != nil:
			t.Errorf("Image(%q) = %v", tc.image, err)
		case tc.err == "" && got != tc.want:
			t.Errorf("Image(%q) = %q, want %q", tc.image, got, tc.want)
		case tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)):
			t.Errorf("Image(%q) = %q, %v; want error containing %q", tc.image, got, err, tc.err)
		}
	}
}

// FuzzImage: whatever a pod names as its image, the agent runs nothing
// but a file directly inside BinDir or ToolsDir (or the tools image's
// PATH command), and does not panic.
func FuzzImage(f *testing.F) {
	for _, s := range []string{"ghcr.io/mesh-dev/mesh-proxy:1", "mesh-e2e/echo", "mesh-e2e/tools", "mesh/x@sha256:1", "mesh-e2e/../../etc/passwd", "mesh/.", ":", "@", "mesh-e2e/a:b:c", "ghcr.io/mesh-dev/mesh-a/b"} {
		f.Add(s)
	}
	bin, tools := f.TempDir(), f.TempDir()
	for _, p := range []string{filepath.Join(bin, "mesh-proxy"), filepath.Join(bin, "mesh-e2e-echo"), filepath.Join(bin, "x"), filepath.Join(tools, "coredns")} {
		if err := os.WriteFile(p, nil, 0o755); err != nil {
			f.Fatal(err)
		}
	}
	n := &Node{cfg: Config{BinDir: bin, ToolsDir: tools}}
	f.Fuzz(func(t *testing.T, image string) {
		p, err := n.Image(image)
		if err != nil || p == "" {
			return
		}
		if d := filepath.Dir(p); d != bin && d != tools {
			t.Fatalf("Image(%q) = %s, outside %s and %s", image, p, bin, tools)
		}
	})
}
