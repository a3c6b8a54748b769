// Package meshctl is the meshctl command line: one file per command group,
// each adding its subcommands to the root.
package meshctl

import (
	"github.com/spf13/cobra"
)

// New returns the root command.
func New() *cobra.Command {
	root := &cobra.Command{
		Use:           "meshctl",
		Short:         "Operate mesh: identities, the CA, policies and audit logs",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.AddCommand(auditCmd())
	return root
}
