// Package meshproxy is the mesh-proxy command line: `mesh-proxy init`
// installs the pod's interception rules (run as the init container, with
// NET_ADMIN and NET_RAW only), `mesh-proxy run` is the proxy, and
// `mesh-proxy standalone` is the same proxy outside Kubernetes. It turns
// flags into the configurations of packages intercept, proxy, authz and
// audit and runs them; cmd/mesh-proxy only calls New.
package meshproxy

import "github.com/spf13/cobra"

// New returns the root command.
func New() *cobra.Command {
	cmd := &cobra.Command{Use: "mesh-proxy", Short: "mesh's sidecar proxy", SilenceUsage: true, SilenceErrors: true}
	cmd.AddCommand(initCmd(), runCmd(), standaloneCmd())
	return cmd
}
