// Package meshctl is the meshctl command line: one file per command group,
// each adding its subcommands to the root.
package meshctl

import (
	"github.com/spf13/cobra"
	"k8s.io/cli-runtime/pkg/genericclioptions"
)

// New returns the root command.
func New() *cobra.Command {
	root := &cobra.Command{
		Use:           "meshctl",
		Short:         "Operate mesh: identities, the CA, policies and audit logs",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	// kubectl's own connection flags: --kubeconfig, --context, -n, ...
	kube := genericclioptions.NewConfigFlags(true)
	kube.AddFlags(root.PersistentFlags())
	root.AddCommand(auditCmd(kube), identityCmd(kube))
	root.AddCommand(versionCmd(kube), policyCmd(kube), caCmd(kube))
	root.AddCommand(checkCmd(kube))
	return root
}
