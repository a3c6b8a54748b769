package meshctl

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/spf13/cobra"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/cli-runtime/pkg/genericclioptions"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"

	"github.com/mesh-dev/mesh/authz"
	"github.com/mesh-dev/mesh/authz/api/v1alpha1/policyclient"
	"github.com/mesh-dev/mesh/controlplane/client"
	"github.com/mesh-dev/mesh/controlplane/inventory"
	"github.com/mesh-dev/mesh/identity"
)

// Verdict is `meshctl policy check -o json|yaml`: what the destination's
// proxy decides for the request, and why. The decision fields are the
// proxy's own (authz.Decision), as its audit records name them.
type Verdict struct {
	From string `json:"from"`
	// FromIdentity is the caller's SPIFFE ID; empty for an unmeshed
	// caller, which connects in plaintext.
	FromIdentity string `json:"fromIdentity,omitempty"`
	To           string `json:"to"`
	Port         uint16 `json:"port"`
	Method       string `json:"method,omitempty"`
	Path         string `json:"path,omitempty"`
	// Decision is ALLOW or DENY.
	Decision string `json:"decision"`
	// Policy is NAMESPACE/NAME of the deciding policy, the ALLOW policies
	// none of whose rules matched, default:<mode>, or "none" when the
	// destination has no proxy.
	Policy string `json:"policy"`
	// Rule is the deciding rule's index in its policy.
	Rule   string `json:"rule,omitempty"`
	Reason string `json:"reason"`
	// Audit names the AUDIT policy that would record the request.
	Audit string `json:"audit,omitempty"`
	// DryRun is the decision were the dry-run policies enforced.
	DryRun *DryRunVerdict `json:"dryRun,omitempty"`
	// PolicyVersion is the version of the policy the controller pushes to
	// the destination's proxy: the proxy's own (its admin endpoint and
	// the policy's status show the one it enforces).
	PolicyVersion string `json:"policyVersion,omitempty"`
	// Applied is the policies that apply to the destination.
	Applied []string `json:"applied,omitempty"`
	// ProxyPolicyVersion is the version the destination's proxy says it
	// enforces (its /policy), and ProxyCurrent whether it is
	// PolicyVersion: when not, the proxy may decide otherwise until it
	// catches up, and a warning says how it differs.
	ProxyPolicyVersion string `json:"proxyPolicyVersion,omitempty"`
	ProxyCurrent       *bool  `json:"proxyCurrent,omitempty"`
	// Warnings are the controller's and compiler's, and meshctl's own.
	Warnings []string `json:"warnings,omitempty"`
}

// DryRunVerdict is a would-be decision.
type DryRunVerdict struct {
	Decision string `json:"decision"`
	Policy   string `json:"policy"`
	Rule     string `json:"rule,omitempty"`
	Reason   string `json:"reason"`
}

// ReasonNotMeshed is the reason for a destination without a proxy.
const ReasonNotMeshed = "the destination is not meshed: no proxy enforces policy on it"

// meshConfig is what the controller compiles with.
type meshConfig struct {
	TrustDomain spiffeid.TrustDomain
	MeshDefault authz.DefaultMode
}

// checkRequest is one question to decide.
type checkRequest struct {
	// From is the caller's pod; nil means an unmeshed caller.
	From *corev1.Pod
	// To is the destination pod, by namespace and name.
	ToNamespace, To string
	// Port is a number or a container port name of the destination.
	Port         string
	Method, Path string
	// ReadProxy, when set, reads the destination proxy's /policy, to put
	// what it enforces beside what the controller pushes it.
	ReadProxy func(*corev1.Pod) proxyPolicy
}

// decide compiles the destination's policy with the controller's own
// inventory over the given informers (which it starts and stops), the
// way the controller pushes it, then compiles and evaluates it as the
// destination's proxy does.
func decide(ctx context.Context, mesh meshConfig, factory informers.SharedInformerFactory, policies cache.SharedIndexInformer, req checkRequest) (*Verdict, error) {
	inv, stop, err := runInventory(ctx, mesh, factory, policies)
	if err != nil {
		return nil, err
	}
	defer stop()

	dest, err := inv.Pod(req.ToNamespace, req.To)
	if apierrors.IsNotFound(err) {
		return nil, failed(fmt.Errorf("policy check: pod %s not found in namespace %s (-n sets the namespace)", req.To, req.ToNamespace))
	}
	if err != nil {
		return nil, fmt.Errorf("policy check: pod %s/%s: %w", req.ToNamespace, req.To, err)
	}
	port, err := destinationPort(dest, req.Port)
	if err != nil {
		return nil, err
	}
	v := &Verdict{To: req.ToNamespace + "/" + req.To, Port: port, Method: req.Method, Path: req.Path}
	q := authz.Request{Port: port, HTTP: req.Method != "" || req.Path != "", Method: req.Method, Path: req.Path}
	if q.HTTP && q.Method == "" {
		q.Method = "GET"
		v.Method = q.Method
	}
	if q.HTTP && q.Path == "" {
		q.Path = "/"
		v.Path = q.Path
	}
	if req.From != nil {
		v.From = req.From.Namespace + "/" + req.From.Name
		if inventory.Meshed(req.From) {
			id, err := inventory.Identity(mesh.TrustDomain, req.From)
			if err != nil {
				return nil, fmt.Errorf("policy check: identity of %s: %w", v.From, err)
			}
			q.Peer, v.FromIdentity = id.String(), id.String()
		} else {
			v.Warnings = append(v.Warnings, "the caller "+v.From+" is not meshed: it connects in plaintext, with no identity")
		}
	}
	if !inventory.Meshed(dest) {
		v.Decision, v.Policy, v.Reason = "ALLOW", "none", ReasonNotMeshed
		return v, nil
	}

	pol, err := inv.Policy(req.ToNamespace, req.To)
	if errors.Is(err, inventory.ErrInvalidDeny) {
		// The controller then pushes nothing new: the proxy keeps its
		// last good policy, or denies everything if it never had one.
		v.Warnings = append(v.Warnings, err.Error()+"; the proxy keeps its last good policy, or, shown here, denies everything if it has none")
		pol, err = inventory.DenyAll(), nil
	}
	if err != nil {
		return nil, fmt.Errorf("policy check: %w", err)
	}
	t, err := client.CompilePolicy(mesh.TrustDomain, req.ToNamespace, req.To, pol)
	if err != nil {
		return nil, err
	}
	if !q.HTTP && t.RequiresHTTP(port) {
		v.Warnings = append(v.Warnings, fmt.Sprintf("rules on port %d name HTTP methods or paths: the proxy refuses a connection there that is not HTTP; pass --method and --path to check a request", port))
	}
	d := t.Evaluate(&q)
	v.Decision, v.Policy, v.Rule, v.Reason, v.Audit = decisionWord(d.Allow), d.Policy, d.Rule, d.Reason, d.Audit
	if d.HasDryRun {
		v.DryRun = &DryRunVerdict{Decision: decisionWord(d.DryRun.Allow), Policy: d.DryRun.Policy, Rule: d.DryRun.Rule, Reason: d.DryRun.Reason}
	}
	v.PolicyVersion = pol.Version
	for _, a := range pol.Applied {
		v.Applied = append(v.Applied, a.Namespace+"/"+a.Name)
	}
	v.Warnings = append(v.Warnings, pol.Warnings...)
	if req.ReadProxy != nil {
		switch pp := req.ReadProxy(dest); {
		case pp.err != "":
			v.Warnings = append(v.Warnings, "the destination's proxy could not be read: "+pp.err)
		default:
			diff := policyDiff(pp.info, pol)
			current := diff == ""
			v.ProxyPolicyVersion, v.ProxyCurrent = pp.info.Version, &current
			if !current {
				v.Warnings = append(v.Warnings, "the destination's proxy does not enforce this policy yet, and may decide otherwise until it does: "+diff)
			}
		}
	}
	return v, nil
}

// runInventory runs the controller's own inventory over the informers,
// which it starts, until it has synced; stop stops them and waits.
func runInventory(ctx context.Context, mesh meshConfig, factory informers.SharedInformerFactory, policies cache.SharedIndexInformer) (inv *inventory.Inventory, stop func(), err error) {
	// Policies alone: meshctl reads no Services, and computes no
	// destinations.
	inv, err = inventory.New(inventory.Config{TrustDomain: mesh.TrustDomain, MeshDefault: mesh.MeshDefault, Informers: factory, Policies: policies, PoliciesOnly: true})
	if err != nil {
		return nil, nil, err
	}
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	stop = func() {
		cancel()
		factory.Shutdown()
		wg.Wait()
	}
	factory.Start(ctx.Done())
	wg.Go(func() { policies.Run(ctx.Done()) })
	if !cache.WaitForCacheSync(ctx.Done(), inv.HasSynced) {
		err := fmt.Errorf("meshctl: the pods, namespaces and policies were not listed in time: %w", context.Cause(ctx))
		stop()
		return nil, nil, err
	}
	return inv, stop, nil
}

// clusterPolicies is an informer of the cluster's AuthorizationPolicies
// with kubectl's connection flags, not started.
func clusterPolicies(kube *genericclioptions.ConfigFlags) (cache.SharedIndexInformer, error) {
	rc, err := kube.ToRESTConfig()
	if err != nil {
		return nil, fmt.Errorf("kubeconfig: %w", err)
	}
	pc, err := policyclient.New(rc)
	if err != nil {
		return nil, fmt.Errorf("policy client: %w", err)
	}
	return policyclient.NewInformer(pc, 0), nil
}

// destinationPort reads --port: a number, or the name of one of the
// destination's container ports.
func destinationPort(pod *corev1.Pod, s string) (uint16, error) {
	if n, err := strconv.ParseUint(s, 10, 16); err == nil && n > 0 {
		return uint16(n), nil
	}
	if n, ok := inventory.ContainerPorts(pod)[s]; ok {
		return n, nil
	}
	return 0, usage(fmt.Errorf("--port %q: not a port number (1-65535) nor a named container port of pod %s/%s", s, pod.Namespace, pod.Name))
}

func decisionWord(allow bool) string {
	if allow {
		return "ALLOW"
	}
	return "DENY"
}

func policyCheckCmd(kube *genericclioptions.ConfigFlags) *cobra.Command {
	var from, to, port, method, path, fromNS, meshNS, output string
	cmd := &cobra.Command{
		Use:   "check --from pod/A --to pod/B --port P [--method M --path /x]",
		Short: "Decide a request against the live policies exactly as the destination's proxy would",
		Long: `Decide whether pod A may reach pod B on port P, with the live policies: the
destination's policy is compiled by the controller's own code (its namespace's
and the root namespace's policies, named ports, the namespace's default-policy
annotation, the mesh default from the controller's --default-policy) and
evaluated by the proxy's own evaluator. It prints the decision, the policy and
rule that decided and the reason, as the proxy's audit record names them.

The caller's identity is its ServiceAccount's SPIFFE ID when it is meshed; an
unmeshed caller has none. --method or --path make it an HTTP request (GET and
/ by default); without them, a TCP connection. --port takes a number or the
name of one of B's container ports.

Exit status: 0 when allowed, 1 when denied, 2 on a usage error.`,
		Example: `  # may the frontend call the backend's API?
  meshctl policy check -n shop --from pod/frontend-5d8f7 --to pod/backend-7d9c5 --port 8080 --method POST --path /orders

  # a caller in another namespace, as JSON
  meshctl policy check -n shop --from-namespace web --from pod/gateway-0 --to pod/backend-7d9c5 --port http -o json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := checkOutput(output); err != nil {
				return err
			}
			if from == "" || to == "" || port == "" {
				return usage(errors.New("policy check: --from, --to and --port are required"))
			}
			fromKind, fromName, err := parseRef(from)
			if err != nil {
				return err
			}
			toKind, toName, err := parseRef(to)
			if err != nil {
				return err
			}
			if fromKind != "pod" || toKind != "pod" {
				return usage(errors.New("policy check: --from and --to take pod/NAME: the pods of a Deployment may differ in labels and ports"))
			}
			if method != "" && !isMethod(method) {
				return usage(fmt.Errorf("--method %q: want one of %s", method, strings.Join(authz.Methods, ", ")))
			}
			if path != "" && !strings.HasPrefix(path, "/") {
				return usage(fmt.Errorf("--path %q: want an absolute path, starting with /", path))
			}
			cs, ns, err := clients(kube)
			if err != nil {
				return err
			}
			if fromNS == "" {
				fromNS = ns
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), 30*time.Second)
			defer cancel()
			src, err := resolvePods(ctx, cs, fromNS, "pod", fromName)
			if err != nil {
				return err
			}
			mesh, warnings, err := readMeshConfig(ctx, cs, meshNS)
			if err != nil {
				return err
			}
			policies, err := clusterPolicies(kube)
			if err != nil {
				return err
			}
			// Only the destination's namespace: its pods are what the
			// inventory needs; namespaces and policies are cluster-wide.
			factory := informers.NewSharedInformerFactoryWithOptions(cs, 0, informers.WithNamespace(ns))
			v, err := decide(ctx, mesh, factory, policies, checkRequest{
				From: &src[0], ToNamespace: ns, To: toName, Port: port, Method: strings.ToUpper(method), Path: path,
				ReadProxy: func(p *corev1.Pod) proxyPolicy { return readProxyPolicy(ctx, cs, p) },
			})
			if err != nil {
				return err
			}
			v.Warnings = append(warnings, v.Warnings...)
			if err := printVerdict(cmd.OutOrStdout(), output, v); err != nil {
				return err
			}
			if v.Decision != "ALLOW" {
				return &ExitError{Code: 1, Err: fmt.Errorf("policy check: denied by %s: %s", v.Policy, v.Reason)}
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&from, "from", "", "the calling pod, pod/NAME (in --from-namespace)")
	f.StringVar(&to, "to", "", "the destination pod, pod/NAME (in -n)")
	f.StringVar(&port, "port", "", "the destination port: a number or a container port name")
	f.StringVar(&method, "method", "", "an HTTP request's method (makes the check an HTTP request)")
	f.StringVar(&path, "path", "", "an HTTP request's path (makes the check an HTTP request)")
	f.StringVar(&fromNS, "from-namespace", "", "the calling pod's namespace (default: -n)")
	f.StringVarP(&output, "output", "o", "table", "output format: table, json or yaml")
	addMeshNamespaceFlag(cmd, &meshNS)
	complete := func(cmd *cobra.Command, _ []string, prefix string) ([]string, cobra.ShellCompDirective) {
		var out []string
		for _, w := range completeWorkloads(cmd.Context(), kube, prefix) {
			if strings.HasPrefix(w, "pod/") {
				out = append(out, w)
			}
		}
		return out, cobra.ShellCompDirectiveNoFileComp
	}
	_ = cmd.RegisterFlagCompletionFunc("from", complete)
	_ = cmd.RegisterFlagCompletionFunc("to", complete)
	_ = cmd.RegisterFlagCompletionFunc("method", cobra.FixedCompletions(authz.Methods, cobra.ShellCompDirectiveNoFileComp))
	_ = cmd.RegisterFlagCompletionFunc("output", cobra.FixedCompletions([]string{"table", "json", "yaml"}, cobra.ShellCompDirectiveNoFileComp))
	return cmd
}

func isMethod(m string) bool {
	for _, x := range authz.Methods {
		if strings.EqualFold(x, m) {
			return true
		}
	}
	return false
}

// readMeshConfig reads the trust domain and the mesh default from the
// controller Deployment's arguments; the controller's own defaults (with
// a warning) when there is no Deployment.
func readMeshConfig(ctx context.Context, cs kubernetes.Interface, ns string) (meshConfig, []string, error) {
	list, err := cs.AppsV1().Deployments(ns).List(ctx, metav1.ListOptions{LabelSelector: controllerSelector})
	if err != nil {
		return meshConfig{}, nil, fmt.Errorf("policy check: list the controller's Deployment in %s: %w", ns, err)
	}
	td, mode := identity.DefaultTrustDomain, string(authz.DefaultAllowMesh)
	var warnings []string
	if len(list.Items) == 0 {
		warnings = append(warnings, fmt.Sprintf("no mesh-controller Deployment in namespace %s (--mesh-namespace): assuming trust domain %s and default policy %s", ns, td, mode))
	} else {
		td, mode = controllerArgs(&list.Items[0], td, mode)
	}
	trustDomain, err := spiffeid.TrustDomainFromString(td)
	if err != nil {
		return meshConfig{}, nil, fmt.Errorf("policy check: the controller's --trust-domain %q: %w", td, err)
	}
	m, err := authz.ParseDefaultMode(mode)
	if err != nil {
		return meshConfig{}, nil, fmt.Errorf("policy check: the controller's --default-policy: %w", err)
	}
	return meshConfig{TrustDomain: trustDomain, MeshDefault: m}, warnings, nil
}

// controllerArgs reads --trust-domain and --default-policy from the
// controller container's arguments, in either of their forms.
func controllerArgs(d *appsv1.Deployment, td, mode string) (string, string) {
	c := controllerContainer(d.Spec.Template.Spec.Containers)
	if c == nil {
		return td, mode
	}
	args := append(append([]string(nil), c.Command...), c.Args...)
	for i, a := range args {
		for flag, dst := range map[string]*string{"--trust-domain": &td, "--default-policy": &mode} {
			if v, ok := strings.CutPrefix(a, flag+"="); ok {
				*dst = v
			} else if a == flag && i+1 < len(args) {
				*dst = args[i+1]
			}
		}
	}
	return td, mode
}

func printVerdict(w io.Writer, output string, v *Verdict) error {
	if done, err := printStructured(w, output, v); done {
		return err
	}
	from := v.From
	if v.FromIdentity != "" {
		from += " (" + v.FromIdentity + ")"
	} else {
		from += " (no identity)"
	}
	req := "TCP"
	if v.Method != "" {
		req = v.Method + " " + v.Path
	}
	rule := v.Rule
	if rule == "" {
		rule = "-"
	}
	fmt.Fprintf(w, "%s\n  from:    %s\n  to:      %s port %d, %s\n  policy:  %s\n  rule:    %s\n  reason:  %s\n", v.Decision, from, v.To, v.Port, req, v.Policy, rule, v.Reason)
	if v.Audit != "" {
		fmt.Fprintf(w, "  audit:   %s\n", v.Audit)
	}
	if v.DryRun != nil {
		fmt.Fprintf(w, "  dry run: %s by %s (%s)\n", v.DryRun.Decision, v.DryRun.Policy, v.DryRun.Reason)
	}
	if v.PolicyVersion != "" {
		fmt.Fprintf(w, "  version: %s (applied: %s)\n", v.PolicyVersion, strings.Join(v.Applied, ", "))
	}
	if v.ProxyCurrent != nil {
		state := "current"
		if !*v.ProxyCurrent {
			state = "not current"
		}
		fmt.Fprintf(w, "  proxy:   enforces %s (%s)\n", v.ProxyPolicyVersion, state)
	}
	for _, x := range v.Warnings {
		fmt.Fprintf(w, "  warning: %s\n", x)
	}
	return nil
}
