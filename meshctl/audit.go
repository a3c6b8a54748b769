package meshctl

import (
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/spf13/cobra"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"k8s.io/cli-runtime/pkg/genericclioptions"

	"github.com/mesh-dev/mesh/authz/audit"
	"github.com/mesh-dev/mesh/identity"
)

func auditCmd(kube *genericclioptions.ConfigFlags) *cobra.Command {
	cmd := &cobra.Command{Use: "audit", Short: "Read and verify authorization audit logs"}
	cmd.AddCommand(auditVerifyCmd(), auditLogsCmd(kube))
	return cmd
}

func auditVerifyCmd() *cobra.Command {
	var (
		bundleFile, trustDomain string
		chainOnly, strict       bool
	)
	cmd := &cobra.Command{
		Use:   "verify FILE...|-",
		Short: "Verify audit logs: the hash chain and the signed checkpoints; exit 1 at the first failure",
		Long: `Verify audit logs ("-" reads standard input): every record's hash and link,
and every checkpoint's signature, made with the proxy's SVID key, against the
trust bundle at the checkpoint's time. A stream signed by no checkpoint fails
(a re-chained log with its checkpoints stripped looks like that). Records after
a stream's last checkpoint are reported as unanchored; --strict fails them.

Exit status: 0 when every file verifies, 1 at the first failure (the file and
line are named), 2 on a usage error.`,
		Example: `  # a log copied from a pod's mesh-audit volume, against the mesh's roots
  kubectl get configmap -n shop mesh-trust-bundle -o jsonpath='{.data.ca-bundle\.pem}' > roots.pem
  meshctl audit verify --bundle roots.pem audit.log

  # straight from the proxy, every record signed
  meshctl audit logs -n shop pod/backend-7d9c5b-x2x8q -o jsonl | meshctl audit verify --bundle roots.pem --strict -`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			opts := audit.VerifyOptions{ChainOnly: chainOnly, Strict: strict}
			switch {
			case chainOnly && (bundleFile != "" || strict):
				return usage(errors.New("audit verify: --chain-only checks no signatures: it excludes --bundle and --strict"))
			case !chainOnly && bundleFile == "":
				return usage(errors.New("audit verify: --bundle is required (the trust roots checkpoints must chain to), or --chain-only to check only the hash chain"))
			case !chainOnly:
				td, err := spiffeid.TrustDomainFromString(trustDomain)
				if err != nil {
					return usage(fmt.Errorf("audit verify: --trust-domain: %w", err))
				}
				b, err := x509bundle.Load(td, bundleFile)
				if err != nil {
					return fmt.Errorf("audit verify: --bundle: %w", err)
				}
				if b.Empty() {
					return fmt.Errorf("audit verify: --bundle %s: no certificates", bundleFile)
				}
				opts.Bundle = b
			}
			for _, name := range args {
				if err := verifyFile(cmd, name, opts); err != nil {
					return fmt.Errorf("%s: %w", name, err)
				}
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&bundleFile, "bundle", "", "PEM file of the trust roots (every root valid during the logs' time); required unless --chain-only")
	cmd.Flags().StringVar(&trustDomain, "trust-domain", identity.DefaultTrustDomain, "trust domain of the bundle; checkpoints signed in any other fail")
	cmd.Flags().BoolVar(&chainOnly, "chain-only", false, "check only the hash chain, not the signed checkpoints (proves nothing against whoever could edit the file)")
	cmd.Flags().BoolVar(&strict, "strict", false, "fail records after a stream's last checkpoint instead of reporting them as unanchored")
	return cmd
}

// verifyFile verifies one file and prints, on success:
//
//	FILE: OK: R records in S streams[; G gaps account for D records the proxy dropped]
//	FILE: stream "NAME": R records, C checkpoints signed by ID, U unanchored after the last checkpoint
//	FILE: stream "NAME": R records, hash chain only (signatures not checked)
func verifyFile(cmd *cobra.Command, name string, opts audit.VerifyOptions) error {
	var r io.Reader = cmd.InOrStdin()
	if name != "-" {
		f, err := os.Open(name)
		if err != nil {
			return err
		}
		defer f.Close()
		r = f
	}
	res, err := audit.Verify(r, opts)
	if err != nil {
		return err
	}
	out := cmd.OutOrStdout()
	fmt.Fprintf(out, "%s: OK: %d records in %d streams", name, res.Records, len(res.Streams))
	if res.Gaps > 0 {
		fmt.Fprintf(out, "; %d gaps account for %d records the proxy dropped", res.Gaps, res.Dropped)
	}
	fmt.Fprintln(out)
	for _, s := range res.Streams {
		if opts.ChainOnly {
			fmt.Fprintf(out, "%s: stream %q: %d records, hash chain only (signatures not checked)\n", name, s.Name, s.Records)
			continue
		}
		fmt.Fprintf(out, "%s: stream %q: %d records, %d checkpoints signed by %s, %d unanchored after the last checkpoint\n", name, s.Name, s.Records, s.Checkpoints, s.Signer, s.Unanchored)
	}
	return nil
}
