package meshctl

import (
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/spf13/cobra"
	"k8s.io/cli-runtime/pkg/genericclioptions"

	"github.com/mesh-dev/mesh/authz"
)

func policyCmd(kube *genericclioptions.ConfigFlags) *cobra.Command {
	cmd := &cobra.Command{Use: "policy", Short: "Validate AuthorizationPolicies, ask what the live ones decide, show what a proxy enforces"}
	cmd.AddCommand(policyLintCmd(), policyCheckCmd(kube), policyShowCmd(kube))
	return cmd
}

func policyLintCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "lint FILE...|-",
		Short: "Validate AuthorizationPolicy YAML offline, with the admission webhook's own validation",
		Long: `Validate AuthorizationPolicies in YAML files ("-" reads standard input; a
file may hold several documents separated by ---) without a cluster. Each
policy gets the validation the admission webhook (/validate-policy) gives it,
so a policy that passes here is one the API server will accept.

One line per policy: FILE: NAMESPACE/NAME: ok, or the errors, each naming its
field. Exit status: 0 when every policy is valid, 1 when one is not, 2 when a
file cannot be read or is not AuthorizationPolicy YAML (unknown fields
included).`,
		Example: `  # before kubectl apply
  meshctl policy lint policies/*.yaml

  # from a pipeline
  helm template mychart | meshctl policy lint -`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var invalid, unreadable []string
			for _, name := range args {
				data, err := readInput(cmd.InOrStdin(), name)
				if err == nil {
					var results []lintResult
					results, err = lint(data)
					for _, r := range results {
						fmt.Fprintf(cmd.OutOrStdout(), "%s: %s\n", name, r)
						if len(r.Errors) > 0 {
							invalid = append(invalid, name)
						}
					}
				}
				if err != nil {
					fmt.Fprintf(cmd.OutOrStdout(), "%s: %v\n", name, err)
					unreadable = append(unreadable, name)
				}
			}
			switch {
			case len(unreadable) > 0:
				return usage(fmt.Errorf("policy lint: cannot read as AuthorizationPolicy YAML: %s", strings.Join(unreadable, ", ")))
			case len(invalid) > 0:
				return failed(fmt.Errorf("policy lint: invalid policies in %s", strings.Join(compact(invalid), ", ")))
			}
			return nil
		},
	}
}

// lintResult is one policy's verdict.
type lintResult struct {
	// Policy is NAMESPACE/NAME, or NAME when the document sets no
	// namespace (kubectl's -n will).
	Policy string
	// Errors are the webhook's, each naming its field; none when valid.
	Errors []string
}

// String is the policy's line: "NAMESPACE/NAME: ok" or its errors.
func (r lintResult) String() string {
	if len(r.Errors) == 0 {
		return r.Policy + ": ok"
	}
	return r.Policy + ": " + strings.Join(r.Errors, "; ")
}

// lint validates every policy in data as the admission webhook does. The
// error is for data that is not policy YAML.
func lint(data []byte) ([]lintResult, error) {
	policies, err := authz.ParsePolicies(data)
	if err != nil {
		return nil, err
	}
	if len(policies) == 0 {
		return nil, fmt.Errorf("meshctl: no AuthorizationPolicy in the input")
	}
	out := make([]lintResult, 0, len(policies))
	for i := range policies {
		p := &policies[i]
		name := p.Name
		if p.Namespace != "" {
			name = p.Namespace + "/" + name
		}
		if name == "" {
			name = fmt.Sprintf("(policy %d has no name)", i+1)
		}
		r := lintResult{Policy: name}
		for _, e := range authz.Validate(p) {
			r.Errors = append(r.Errors, e.Error())
		}
		out = append(out, r)
	}
	return out, nil
}

// readInput reads a named file, or in for "-".
func readInput(in io.Reader, name string) ([]byte, error) {
	if name == "-" {
		b, err := io.ReadAll(in)
		if err != nil {
			return nil, fmt.Errorf("meshctl: read standard input: %w", err)
		}
		return b, nil
	}
	b, err := os.ReadFile(name)
	if err != nil {
		return nil, fmt.Errorf("meshctl: %w", err)
	}
	return b, nil
}

// compact drops adjacent duplicates.
func compact(s []string) []string {
	var out []string
	for _, v := range s {
		if len(out) == 0 || out[len(out)-1] != v {
			out = append(out, v)
		}
	}
	return out
}
