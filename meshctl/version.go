package meshctl

import (
	"context"
	"fmt"
	"io"
	"sort"
	"strings"
	"time"

	"github.com/mesh-dev/mesh/version"
	"github.com/spf13/cobra"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/cli-runtime/pkg/genericclioptions"
	"k8s.io/client-go/kubernetes"
)

// Version is meshctl's release: mesh's (package version).
var Version = version.Version

// controllerSelector finds the controller's pods and Deployment, as the
// chart labels them.
const controllerSelector = "app.kubernetes.io/name=mesh-controller"

// VersionInfo is `meshctl version -o json|yaml`.
type VersionInfo struct {
	Client string `json:"client"`
	// Controller is the image tag the controller's pods run, "" when
	// none was found; several tags (a rollout under way) are joined by
	// ", ".
	Controller string `json:"controller"`
	// ControllerNamespace is where meshctl looked.
	ControllerNamespace string `json:"controllerNamespace"`
}

func versionCmd(kube *genericclioptions.ConfigFlags) *cobra.Command {
	var output, meshNS string
	cmd := &cobra.Command{
		Use:   "version",
		Short: "Print meshctl's version and the controller's",
		Long: `Print meshctl's version and the controller's: the image tag of the
mesh-controller pods (label app.kubernetes.io/name=mesh-controller) in
--mesh-namespace. Exit status 1 when no controller is installed there.`,
		Example: `  meshctl version
  meshctl version -o json --mesh-namespace mesh`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := checkOutput(output); err != nil {
				return err
			}
			info := VersionInfo{Client: Version, ControllerNamespace: meshNS}
			cs, _, err := clients(kube)
			if err != nil {
				return err
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), 30*time.Second)
			defer cancel()
			tags, err := controllerTags(ctx, cs, meshNS)
			if err != nil {
				return err
			}
			info.Controller = strings.Join(tags, ", ")
			if err := printVersion(cmd.OutOrStdout(), output, info); err != nil {
				return err
			}
			if len(tags) == 0 {
				return failed(fmt.Errorf("version: no mesh-controller pods in namespace %s (is mesh installed there? --mesh-namespace sets it)", meshNS))
			}
			return nil
		},
	}
	cmd.Flags().StringVarP(&output, "output", "o", "table", "output format: table, json or yaml")
	addMeshNamespaceFlag(cmd, &meshNS)
	_ = cmd.RegisterFlagCompletionFunc("output", cobra.FixedCompletions([]string{"table", "json", "yaml"}, cobra.ShellCompDirectiveNoFileComp))
	return cmd
}

func addMeshNamespaceFlag(cmd *cobra.Command, ns *string) {
	cmd.Flags().StringVar(ns, "mesh-namespace", "mesh-system", "the namespace mesh's controller is installed in")
}

// controllerTags is the distinct image tags of the controller's pods in
// ns, sorted; none when no pod is there.
func controllerTags(ctx context.Context, cs kubernetes.Interface, ns string) ([]string, error) {
	pods, err := cs.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: controllerSelector})
	if err != nil {
		return nil, fmt.Errorf("version: list controller pods in %s: %w", ns, err)
	}
	seen := map[string]bool{}
	var tags []string
	for i := range pods.Items {
		p := &pods.Items[i]
		if p.DeletionTimestamp != nil {
			continue
		}
		c := controllerContainer(p.Spec.Containers)
		if c == nil {
			continue
		}
		if t := imageTag(c.Image); !seen[t] {
			seen[t] = true
			tags = append(tags, t)
		}
	}
	sort.Strings(tags)
	return tags, nil
}

// controllerContainer is the chart's "controller" container, else the
// first one.
func controllerContainer(cs []corev1.Container) *corev1.Container {
	for i := range cs {
		if cs[i].Name == "controller" {
			return &cs[i]
		}
	}
	if len(cs) > 0 {
		return &cs[0]
	}
	return nil
}

// imageTag is the tag of an image reference: "latest" when it has none
// (as the runtime reads it), the digest when it is pinned by one only.
func imageTag(ref string) string {
	name, digest, pinned := strings.Cut(ref, "@")
	// A ':' after the last '/' is a tag; before it, a registry's port.
	if i := strings.LastIndex(name, ":"); i > strings.LastIndex(name, "/") {
		return name[i+1:]
	}
	if pinned {
		return digest
	}
	return "latest"
}

func printVersion(w io.Writer, output string, info VersionInfo) error {
	if done, err := printStructured(w, output, info); done {
		return err
	}
	ctl := info.Controller
	if ctl == "" {
		ctl = "not installed (no mesh-controller pods in namespace " + info.ControllerNamespace + ")"
	}
	_, err := fmt.Fprintf(w, "Client:     %s\nController: %s\n", info.Client, ctl)
	return err
}
