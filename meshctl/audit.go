package meshctl

import (
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"github.com/mesh-dev/mesh/authz/audit"
)

func auditCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "audit", Short: "Work with authorization audit logs"}
	cmd.AddCommand(&cobra.Command{
		Use:   "verify FILE...",
		Short: "Verify the hash chain of audit logs: exit 1 at the first broken line",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			for _, name := range args {
				f, err := os.Open(name)
				if err != nil {
					return err
				}
				res, err := audit.Verify(f)
				f.Close()
				if err != nil {
					return fmt.Errorf("%s: %w", name, err)
				}
				fmt.Fprintf(cmd.OutOrStdout(), "%s: OK: %d records in %d streams", name, res.Records, res.Streams)
				if res.Gaps > 0 {
					fmt.Fprintf(cmd.OutOrStdout(), "; %d gaps account for %d records the proxy dropped", res.Gaps, res.Dropped)
				}
				fmt.Fprintln(cmd.OutOrStdout())
			}
			return nil
		},
	})
	return cmd
}
