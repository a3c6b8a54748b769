package meshctl

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/cli-runtime/pkg/genericclioptions"
	"k8s.io/client-go/kubernetes"

	"github.com/mesh-dev/mesh/inject"
	"github.com/mesh-dev/mesh/proxy"
)

// PodIdentity is one pod's line of `meshctl identity show -o json|yaml`:
// the pod, and what its proxy's admin endpoint says it serves. The names
// are documented in docs/meshctl.md and stable.
type PodIdentity struct {
	Namespace string `json:"namespace"`
	Pod       string `json:"pod"`
	proxy.IdentityInfo
	// TimeLeft is notAfter minus meshctl's clock, as a Go duration.
	TimeLeft string `json:"timeLeft"`
	// Healthy: the proxy is ready and its SVID valid now.
	Healthy bool `json:"healthy"`
	// Error says why the pod's identity could not be read; the other
	// fields are then empty.
	Error string `json:"error,omitempty"`
}

func identityCmd(kube *genericclioptions.ConfigFlags) *cobra.Command {
	cmd := &cobra.Command{Use: "identity", Short: "Show the SPIFFE identities meshed pods serve"}
	var output string
	show := &cobra.Command{
		Use:   "show (pod/NAME | deploy/NAME)",
		Short: "Show the identity a pod's proxy actually serves, read from the proxy through the API server",
		Long: `Show the identity a pod's proxy serves right now: its SPIFFE ID, the SVID's
serial number, issuer, validity and key type, the trust bundle's roots, when it
was last renewed and whether the proxy is healthy. meshctl reads it from the
proxy's admin endpoint through the API server's pods/proxy subresource (no
port-forward; it needs "get pods/proxy" in the namespace).

deploy/NAME shows every pod of the Deployment. Exit status: 0 when every pod
shown is meshed and healthy, 1 otherwise, 2 on a usage error.`,
		Example: `  # who is this pod to the mesh?
  meshctl identity show -n shop pod/backend-7d9c5b-x2x8q

  # every pod of a Deployment, as JSON
  meshctl identity show -n shop deploy/backend -o json`,
		Args:              cobra.ExactArgs(1),
		ValidArgsFunction: workloadArg(kube),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkOutput(output); err != nil {
				return err
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), 30*time.Second)
			defer cancel()
			cs, _, pods, err := workloadPods(ctx, kube, args[0])
			if err != nil {
				return err
			}
			ids := readProxies(ctx, cs, pods, time.Now())
			if err := printIdentities(cmd.OutOrStdout(), output, ids); err != nil {
				return err
			}
			var bad []string
			for _, id := range ids {
				if !id.Healthy {
					bad = append(bad, id.Namespace+"/"+id.Pod)
				}
			}
			if len(bad) > 0 {
				return failed(fmt.Errorf("identity show: not meshed or not healthy: %s", strings.Join(bad, ", ")))
			}
			return nil
		},
	}
	show.Flags().StringVarP(&output, "output", "o", "table", "output format: table, json or yaml")
	_ = show.RegisterFlagCompletionFunc("output", cobra.FixedCompletions([]string{"table", "json", "yaml"}, cobra.ShellCompDirectiveNoFileComp))
	cmd.AddCommand(show)
	return cmd
}

// parseRef reads a TYPE/NAME argument as kubectl does.
func parseRef(ref string) (kind, name string, err error) {
	t, n, ok := strings.Cut(ref, "/")
	if !ok || n == "" || strings.Contains(n, "/") {
		return "", "", usage(fmt.Errorf("%q: want TYPE/NAME, for example pod/backend-x2x8q or deploy/backend", ref))
	}
	switch strings.ToLower(t) {
	case "pod", "pods", "po":
		return "pod", n, nil
	case "deploy", "deployment", "deployments":
		return "deployment", n, nil
	}
	return "", "", usage(fmt.Errorf("%q: type %q is not supported: use pod/NAME or deploy/NAME", ref, t))
}

func clients(kube *genericclioptions.ConfigFlags) (kubernetes.Interface, string, error) {
	rc, err := kube.ToRESTConfig()
	if err != nil {
		return nil, "", fmt.Errorf("kubeconfig: %w (set --kubeconfig or KUBECONFIG)", err)
	}
	cs, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return nil, "", fmt.Errorf("kubernetes client: %w", err)
	}
	ns, _, err := kube.ToRawKubeConfigLoader().Namespace()
	if err != nil {
		return nil, "", fmt.Errorf("namespace: %w", err)
	}
	return cs, ns, nil
}

func resolvePods(ctx context.Context, cs kubernetes.Interface, ns, kind, name string) ([]corev1.Pod, error) {
	if kind == "pod" {
		p, err := cs.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return nil, failed(fmt.Errorf("pod %s not found in namespace %s (-n sets the namespace)", name, ns))
		}
		if err != nil {
			return nil, fmt.Errorf("get pod %s/%s: %w", ns, name, err)
		}
		return []corev1.Pod{*p}, nil
	}
	d, err := cs.AppsV1().Deployments(ns).Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil, failed(fmt.Errorf("deployment %s not found in namespace %s (-n sets the namespace)", name, ns))
	}
	if err != nil {
		return nil, fmt.Errorf("get deployment %s/%s: %w", ns, name, err)
	}
	sel, err := metav1.LabelSelectorAsSelector(d.Spec.Selector)
	if err != nil || sel.Empty() {
		return nil, fmt.Errorf("deployment %s/%s: selector: %v", ns, name, err)
	}
	list, err := cs.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: sel.String()})
	if err != nil {
		return nil, fmt.Errorf("list pods of deployment %s/%s: %w", ns, name, err)
	}
	var pods []corev1.Pod
	for _, p := range list.Items {
		if p.DeletionTimestamp == nil {
			pods = append(pods, p)
		}
	}
	if len(pods) == 0 {
		return nil, failed(fmt.Errorf("deployment %s/%s has no pods", ns, name))
	}
	return pods, nil
}

// workloadPods resolves a pod/NAME or deploy/NAME argument to its pods,
// in -n's namespace, with the client it used.
func workloadPods(ctx context.Context, kube *genericclioptions.ConfigFlags, ref string) (kubernetes.Interface, string, []corev1.Pod, error) {
	kind, name, err := parseRef(ref)
	if err != nil {
		return nil, "", nil, err
	}
	cs, ns, err := clients(kube)
	if err != nil {
		return nil, "", nil, err
	}
	pods, err := resolvePods(ctx, cs, ns, kind, name)
	return cs, ns, pods, err
}

// readIdentity asks a pod's proxy for its identity through the API server.
func readIdentity(ctx context.Context, cs kubernetes.Interface, p *corev1.Pod, now time.Time) PodIdentity {
	id := PodIdentity{Namespace: p.Namespace, Pod: p.Name}
	if id.Error = readAdmin(ctx, cs, p, "/identity", &id.IdentityInfo, func() bool { return id.SPIFFEID != "" }); id.Error != "" {
		return id
	}
	cleanIdentity(&id.IdentityInfo)
	id.TimeLeft = id.NotAfter.Sub(now).Truncate(time.Second).String()
	id.Healthy = id.Ready && now.Before(id.NotAfter) && !now.Before(id.NotBefore)
	return id
}

// readAdmin reads a JSON answer of the pod's proxy admin endpoint at path
// into v, through the API server (pods/proxy), and says why it could not:
// the pod is not meshed or has no IP, the request failed, or the answer
// is not JSON that ok accepts. The error's text is fit for a terminal.
func readAdmin(ctx context.Context, cs kubernetes.Interface, p *corev1.Pod, path string, v any, ok func() bool) string {
	port, meshed := adminPort(p)
	if !meshed {
		return fmt.Sprintf("not meshed: the pod has no %s container (label its namespace mesh.dev/inject=enabled, or annotate the pod mesh.dev/inject: enabled, and recreate it)", inject.ProxyContainer)
	}
	if p.Status.PodIP == "" {
		return "the pod has no IP yet (phase " + string(p.Status.Phase) + ")"
	}
	raw, err := cs.CoreV1().Pods(p.Namespace).ProxyGet("http", p.Name, strconv.Itoa(port), path, nil).DoRaw(ctx)
	if err != nil {
		// The API server's error carries the pod's answer.
		return untrusted(fmt.Sprintf("the proxy's admin endpoint (port %d) did not answer %s through the API server: %v", port, path, err))
	}
	if err := json.Unmarshal(raw, v); err != nil || !ok() {
		return fmt.Sprintf("the proxy's %s answered something meshctl cannot read: %v: %.200q", path, err, raw)
	}
	return ""
}

// adminPort is the proxy's admin port from the injected sidecar's args.
func adminPort(p *corev1.Pod) (int, bool) {
	for _, cs := range [][]corev1.Container{p.Spec.InitContainers, p.Spec.Containers} {
		for _, c := range cs {
			if c.Name != inject.ProxyContainer {
				continue
			}
			for i, a := range c.Args {
				v, found := strings.CutPrefix(a, "--admin-port=")
				if !found && a == "--admin-port" && i+1 < len(c.Args) {
					v, found = c.Args[i+1], true
				}
				if n, err := strconv.Atoi(v); found && err == nil && n > 0 && n < 65536 {
					return n, true
				}
			}
			return 15020, true
		}
	}
	return 0, false
}

func printIdentities(w io.Writer, output string, ids []PodIdentity) error {
	if done, err := printStructured(w, output, oneOrItems(ids)); done {
		return err
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "POD\tSPIFFE ID\tSERIAL\tNOT AFTER\tTIME LEFT\tKEY\tRENEWED\tROOTS\tHEALTHY")
	for _, id := range ids {
		if id.Error != "" {
			fmt.Fprintf(tw, "%s/%s\t-\t-\t-\t-\t-\t-\t-\tno: %s\n", id.Namespace, id.Pod, id.Error)
			continue
		}
		renewed := "-"
		if !id.LastRenewal.IsZero() {
			renewed = id.LastRenewal.UTC().Format(time.RFC3339)
		}
		roots := make([]string, len(id.BundleRoots))
		for i, r := range id.BundleRoots {
			roots[i] = shortFingerprint(r)
		}
		healthy := "yes"
		if !id.Healthy {
			healthy = "no"
		}
		fmt.Fprintf(tw, "%s/%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", id.Namespace, id.Pod, id.SPIFFEID, id.SerialNumber,
			id.NotAfter.UTC().Format(time.RFC3339), id.TimeLeft, id.KeyType, renewed, strings.Join(roots, ","), healthy)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if len(ids) == 1 && ids[0].Error == "" {
		fmt.Fprintf(w, "issuer: %s\nroots:  %s\n", ids[0].Issuer, strings.Join(ids[0].BundleRoots, ", "))
	}
	return nil
}

// shortFingerprint is the first 12 hex digits of a fingerprint, enough to
// tell roots apart in a table (-o json has them whole).
func shortFingerprint(f string) string {
	_, hex, ok := strings.Cut(f, ":")
	if !ok {
		hex = f
	}
	if len(hex) > 12 {
		hex = hex[:12]
	}
	return hex
}

func checkOutput(o string) error {
	switch o {
	case "table", "json", "yaml":
		return nil
	}
	return usage(fmt.Errorf("--output %q: want table, json or yaml", o))
}

// completeWorkloads completes pod/ and deploy/ names in the namespace.
func completeWorkloads(ctx context.Context, kube *genericclioptions.ConfigFlags, prefix string) []string {
	cs, ns, err := clients(kube)
	if err != nil {
		return nil
	}
	if ctx == nil {
		ctx = context.Background()
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	var out []string
	if pods, err := cs.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{}); err == nil {
		for _, p := range pods.Items {
			out = append(out, "pod/"+p.Name)
		}
	}
	if deps, err := cs.AppsV1().Deployments(ns).List(ctx, metav1.ListOptions{}); err == nil {
		for _, d := range deps.Items {
			out = append(out, "deploy/"+d.Name)
		}
	}
	var match []string
	for _, o := range out {
		if strings.HasPrefix(o, prefix) {
			match = append(match, o)
		}
	}
	return match
}

// ExitError carries the exit status meshctl ends with: 1 for a failed
// check or finding, 2 for a usage error.
type ExitError struct {
	Code int
	Err  error
}

func (e *ExitError) Error() string { return e.Err.Error() }
func (e *ExitError) Unwrap() error { return e.Err }

func usage(err error) error  { return &ExitError{Code: 2, Err: err} }
func failed(err error) error { return &ExitError{Code: 1, Err: err} }

// ExitCode is the status meshctl exits with after err: 0 for nil, the
// ExitError's code, 2 for an unknown command, 1 otherwise. Bad flags and
// arguments are ExitErrors already (markUsageErrors); cobra reports an
// unknown subcommand before any of meshctl's code runs, so only its
// message tells it apart.
func ExitCode(err error) int {
	if err == nil {
		return 0
	}
	var e *ExitError
	if errors.As(err, &e) {
		return e.Code
	}
	if strings.HasPrefix(err.Error(), "unknown command ") {
		return 2
	}
	return 1
}
