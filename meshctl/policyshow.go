package meshctl

import (
	"context"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"k8s.io/cli-runtime/pkg/genericclioptions"
	"k8s.io/client-go/informers"

	"github.com/mesh-dev/mesh/proxy"
)

func policyShowCmd(kube *genericclioptions.ConfigFlags) *cobra.Command {
	var output, meshNS string
	cmd := &cobra.Command{
		Use:   "show pod/NAME|deploy/NAME",
		Short: "Show the policies a pod's proxy enforces, beside those the controller computes for it now",
		Long: `Show which AuthorizationPolicies a meshed pod's proxy enforces now, by
namespace, name and generation, with its default and the version it
acknowledged, read from the proxy's admin endpoint (/policy) through the API
server (pods/proxy, as identity show does). Beside it, the policy the
controller computes for the pod from the live pods and policies, with the
controller's own code: CURRENT says whether the proxy enforces exactly that,
and a line under the table says how it differs when it does not (a proxy not
connected to a controller, or one that refused the policy: its log says
which).

deploy/NAME shows each of the Deployment's pods. The rules themselves are
in the policies (kubectl get authorizationpolicies -o yaml); meshctl policy
check decides a request against them.

Exit status: 0 when every pod's proxy is current, 1 when one is not, is not
meshed or cannot be read, 2 on a usage error.`,
		Example: `  # what does the backend's proxy enforce?
  meshctl policy show -n shop pod/backend-7d9c5b-x2x8q

  # every pod of a Deployment, as JSON
  meshctl policy show -n shop deploy/backend -o json`,
		Args:              cobra.ExactArgs(1),
		ValidArgsFunction: workloadArg(kube),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkOutput(output); err != nil {
				return err
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), 30*time.Second)
			defer cancel()
			cs, ns, pods, err := workloadPods(ctx, kube, args[0])
			if err != nil {
				return err
			}
			policies, err := clusterPolicies(kube)
			if err != nil {
				return err
			}
			mesh, warnings, err := readMeshConfig(ctx, cs, meshNS)
			if err != nil {
				return err
			}
			// The pods' namespace is all the inventory needs of pods;
			// namespaces and policies are cluster-wide.
			inv, stop, err := runInventory(ctx, mesh, informers.NewSharedInformerFactoryWithOptions(cs, 0, informers.WithNamespace(ns)), policies)
			if err != nil {
				return err
			}
			defer stop()
			res := comparePolicies(ctx, cs, inv, pods)
			for _, w := range warnings {
				fmt.Fprintln(cmd.ErrOrStderr(), "warning:", w)
			}
			if err := printPodPolicies(cmd.OutOrStdout(), output, res); err != nil {
				return err
			}
			var bad []string
			for _, r := range res {
				if !r.Current {
					bad = append(bad, r.Namespace+"/"+r.Pod)
				}
			}
			if len(bad) > 0 {
				return failed(fmt.Errorf("policy show: %d of %d %s not enforcing the controller's policy: %s", len(bad), len(res), plural(len(res), "pod is", "pods are"), listed(bad)))
			}
			return nil
		},
	}
	cmd.Flags().StringVarP(&output, "output", "o", "table", "output format: table, json or yaml")
	addMeshNamespaceFlag(cmd, &meshNS)
	_ = cmd.RegisterFlagCompletionFunc("output", cobra.FixedCompletions([]string{"table", "json", "yaml"}, cobra.ShellCompDirectiveNoFileComp))
	return cmd
}

// printPodPolicies prints policy show's answer: a table with a line per
// pod, then how each pod that is not current differs, or JSON/YAML.
func printPodPolicies(w io.Writer, output string, res []PodPolicy) error {
	if done, err := printStructured(w, output, oneOrItems(res)); done {
		return err
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "POD\tSOURCE\tDEFAULT\tVERSION\tSINCE\tCURRENT\tPOLICIES")
	var notes []string
	for _, r := range res {
		name := r.Namespace + "/" + r.Pod
		if r.Proxy == nil {
			fmt.Fprintf(tw, "%s\t-\t-\t-\t-\tno\t-\n", name)
		} else {
			current := "yes"
			if !r.Current {
				current = "no"
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", name, r.Proxy.Source, r.Proxy.DefaultMode, shortVersion(r.Proxy.Version),
				r.Proxy.Since.UTC().Format(time.RFC3339), current, refs(r.Proxy.Policies))
		}
		switch {
		case r.Error != "":
			notes = append(notes, name+": "+r.Error)
		case r.Difference != "":
			notes = append(notes, name+": "+r.Difference)
		}
		if r.Controller != nil {
			for _, x := range r.Controller.Warnings {
				notes = append(notes, name+": warning: "+x)
			}
		}
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	for _, n := range notes {
		fmt.Fprintln(w, n)
	}
	return nil
}

// refs shows policies as NAMESPACE/NAME@GENERATION.
func refs(rs []proxy.PolicyRef) string {
	if len(rs) == 0 {
		return "(none: the default decides)"
	}
	out := make([]string, len(rs))
	for i, r := range rs {
		out[i] = fmt.Sprintf("%s/%s@%d", r.Namespace, r.Name, r.Generation)
	}
	return strings.Join(out, ", ")
}
