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
	markUsageErrors(root)
	return root
}

// markUsageErrors makes cobra's own errors, bad flags and bad positional
// arguments, usage errors (exit status 2) at their source: the flag error
// function is inherited by every subcommand, and each command's Args
// validator is wrapped.
func markUsageErrors(root *cobra.Command) {
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usage(err) })
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		if args := c.Args; args != nil {
			c.Args = func(cmd *cobra.Command, a []string) error {
				if err := args(cmd, a); err != nil {
					return usage(err)
				}
				return nil
			}
		}
		for _, sub := range c.Commands() {
			walk(sub)
		}
	}
	walk(root)
}
