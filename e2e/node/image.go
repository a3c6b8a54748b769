package node

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
)

// ToolsImage runs its container's command from the node's PATH, for init
// containers that need system tools (iptables, ip, sh).
const ToolsImage = "mesh-e2e/tools"

// Image name prefixes the agent maps to local binaries. The chart's images
// (ghcr.io/mesh-dev/mesh-controller, ghcr.io/mesh-dev/mesh-proxy) are
// mesh's own binaries in BinDir; mesh-e2e/<x> are test programs (BinDir's
// mesh-e2e-<x>) or pinned tools (ToolsDir's <x>, such as coredns).
const (
	meshImagePrefix  = "ghcr.io/mesh-dev/mesh-"
	e2eImagePrefix   = "mesh-e2e/"
	localImagePrefix = "mesh/"
)

// imageMapping names the mapping in errors, so a pod's ErrImagePull says
// what would have worked.
const imageMapping = "ghcr.io/mesh-dev/mesh-<x> runs $BinDir/mesh-<x>, mesh-e2e/<x> runs $BinDir/mesh-e2e-<x> or else $MESH_TOOLS_DIR/<x>, mesh/<x> runs $BinDir/<x>, " + ToolsImage + " runs the command from the node's PATH"

// binaryName is what a mapped image's last part may be: a registry path
// component (lower-case letters, digits, single separators), so no image
// name reaches outside BinDir or ToolsDir.
var binaryName = regexp.MustCompile(`^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$`)

// Image maps an image to the binary that runs it. For ToolsImage it
// returns "", and the container's command names the program. The tag and
// digest are ignored: there is one build of each binary.
func (n *Node) Image(image string) (string, error) {
	name, _, _ := strings.Cut(image, "@")
	if i := strings.LastIndex(name, ":"); i > strings.LastIndex(name, "/") {
		name = name[:i]
	}
	var candidates []string
	switch {
	case name == ToolsImage:
		return "", nil
	case strings.HasPrefix(name, meshImagePrefix):
		x := strings.TrimPrefix(name, meshImagePrefix)
		if binaryName.MatchString(x) {
			candidates = []string{filepath.Join(n.cfg.BinDir, "mesh-"+x)}
		}
	case strings.HasPrefix(name, e2eImagePrefix):
		x := strings.TrimPrefix(name, e2eImagePrefix)
		if binaryName.MatchString(x) {
			candidates = []string{filepath.Join(n.cfg.BinDir, "mesh-e2e-"+x), filepath.Join(n.cfg.ToolsDir, x)}
		}
	case strings.HasPrefix(name, localImagePrefix):
		x := strings.TrimPrefix(name, localImagePrefix)
		if binaryName.MatchString(x) {
			candidates = []string{filepath.Join(n.cfg.BinDir, x)}
		}
	}
	if len(candidates) == 0 {
		return "", fmt.Errorf("node: image %q is not mapped to a local binary (%s)", image, imageMapping)
	}
	for _, p := range candidates {
		if isExecutable(p) {
			return p, nil
		}
	}
	return "", fmt.Errorf("node: image %q maps to %s, which is not built (make build, or make tools for mesh-e2e/<tool>)", image, strings.Join(candidates, " or "))
}

func isExecutable(p string) bool {
	st, err := os.Stat(p)
	return err == nil && st.Mode().IsRegular() && st.Mode()&0o111 != 0
}
