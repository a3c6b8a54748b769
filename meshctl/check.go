package meshctl

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/mesh-dev/mesh/authz/api/v1alpha1/policyclient"
	"github.com/spf13/cobra"
	"k8s.io/cli-runtime/pkg/genericclioptions"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
)

// A checker is one line of `meshctl check`: Linkerd's Checker shape
// (pkg/healthcheck), kept as data so the lists in check_mesh.go and
// check_pre.go read as the output does.
type checker struct {
	// description says what holds when the check passes.
	description string
	// hint says what to do when it fails; MESH_NAMESPACE in it is
	// replaced by --mesh-namespace.
	hint string
	// warning makes a failure a warning: shown, but not a reason to exit 1.
	warning bool
	// fatal stops the run when the check fails: the checks after it
	// could only fail for the same reason (the API server is unreachable).
	fatal bool
	// run returns a detail to show after the description when the check
	// passes, or why it failed; an error made by warn is a warning even
	// when the checker is not.
	run func(ctx context.Context, e *checkEnv) (string, error)
}

// A category groups checkers under a heading.
type category struct {
	name     string
	checkers []checker
}

// Results of one check, as `-o json` names them.
const (
	ResultSuccess = "success"
	ResultWarning = "warning"
	ResultError   = "error"
)

// CheckResult is one check's line of `meshctl check -o json`. The names
// are documented in docs/meshctl.md and stable.
type CheckResult struct {
	Description string `json:"description"`
	// Result is success, warning or error.
	Result string `json:"result"`
	// Detail is what the check found: a version, a count, the pods that
	// lag; on failure, why.
	Detail string `json:"detail,omitempty"`
	// Hint says what to do; set when Result is not success.
	Hint string `json:"hint,omitempty"`
}

// CheckCategory is a heading and its checks.
type CheckCategory struct {
	Name   string        `json:"categoryName"`
	Checks []CheckResult `json:"checks"`
}

// CheckReport is `meshctl check -o json`.
type CheckReport struct {
	// Success: no check failed (warnings allowed).
	Success bool `json:"success"`
	// Pre: the checks were `--pre`'s, before install.
	Pre        bool            `json:"pre"`
	Categories []CheckCategory `json:"categories"`
}

// warnError downgrades a failure to a warning.
type warnError struct{ error }

func (w warnError) Unwrap() error { return w.error }

// warn marks err as a warning, not a failure.
func warn(err error) error { return warnError{err} }

// checkOptions are the flags the checks read.
type checkOptions struct {
	rootMargin   time.Duration
	issuerMargin time.Duration
	maxClockSkew time.Duration
	// staleAfter is how old the CA status may be: the leader rewrites it
	// every minute.
	staleAfter time.Duration
}

// checkEnv is what the checks read the cluster through.
type checkEnv struct {
	kube   kubernetes.Interface
	dyn    dynamic.Interface
	meshNS string
	opts   checkOptions
	now    func() time.Time
	// serverDate asks the API server something and returns its Date
	// header, with meshctl's clock just before and after the request.
	serverDate func(ctx context.Context) (date, before, after time.Time, err error)

	// policyInformer returns a new informer of the AuthorizationPolicies,
	// not started.
	policyInformer func() cache.SharedIndexInformer

	// ids is the last reading of the proxies' identities, at idsAt
	// (readIdentities); the checks run one at a time.
	ids   []PodIdentity
	idsAt time.Time
	// caRead is the CA status read in this pass (caStatus).
	caRead passCAStatus
}

// runChecks runs the categories in order. A failing check is retried
// every retryEvery until it passes or wait has passed since the start
// (Linkerd's retryDeadline), so that `--wait` lets a script wait for a
// mesh to become healthy; each attempt is bounded by attemptTimeout.
// A fatal failure ends the run.
func runChecks(ctx context.Context, e *checkEnv, cats []category, wait, retryEvery, attemptTimeout time.Duration) CheckReport {
	deadline := e.now().Add(wait)
	e.newPass()
	rep := CheckReport{Success: true}
	for _, cat := range cats {
		cc := CheckCategory{Name: cat.name}
		stop := false
		for _, c := range cat.checkers {
			r := runOne(ctx, e, c, deadline, retryEvery, attemptTimeout)
			cc.Checks = append(cc.Checks, r)
			if r.Result == ResultError {
				rep.Success = false
				stop = c.fatal
			}
			if stop {
				break
			}
		}
		rep.Categories = append(rep.Categories, cc)
		if stop {
			break
		}
	}
	return rep
}

func runOne(ctx context.Context, e *checkEnv, c checker, deadline time.Time, retryEvery, attemptTimeout time.Duration) CheckResult {
	r := CheckResult{Description: c.description}
	for {
		actx, cancel := context.WithTimeout(ctx, attemptTimeout)
		detail, err := c.run(actx, e)
		cancel()
		r.Detail = detail
		if err == nil {
			r.Result, r.Hint = ResultSuccess, ""
			return r
		}
		// Hints name the mesh's namespace as it was given.
		r.Detail, r.Hint = err.Error(), strings.ReplaceAll(c.hint, "MESH_NAMESPACE", e.meshNS)
		var w warnError
		if c.warning || errors.As(err, &w) {
			// Warnings are not waited for: they need not clear for the
			// mesh to work.
			r.Result = ResultWarning
			return r
		}
		r.Result = ResultError
		if !e.now().Add(retryEvery).Before(deadline) {
			return r
		}
		select {
		case <-ctx.Done():
			return r
		case <-time.After(retryEvery):
		}
		e.newPass()
	}
}

// Marks of each result in the text output.
var resultMarks = map[string]string{ResultSuccess: "✔", ResultWarning: "‼", ResultError: "✖"}

func printCheckReport(w io.Writer, output string, rep CheckReport) error {
	if output == "json" {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(rep)
	}
	var b strings.Builder
	total, failedN, warned := 0, 0, 0
	for i, cat := range rep.Categories {
		if i > 0 {
			b.WriteString("\n")
		}
		fmt.Fprintf(&b, "%s\n%s\n", cat.Name, strings.Repeat("-", len(cat.Name)))
		for _, r := range cat.Checks {
			total++
			line := resultMarks[r.Result] + " " + r.Description
			switch {
			case r.Detail == "":
			case r.Result == ResultSuccess:
				line += " (" + r.Detail + ")"
			default:
				line += ": " + r.Detail
			}
			b.WriteString(line + "\n")
			if r.Hint != "" {
				fmt.Fprintf(&b, "    hint: %s\n", r.Hint)
			}
			switch r.Result {
			case ResultError:
				failedN++
			case ResultWarning:
				warned++
			}
		}
	}
	b.WriteString("\n")
	switch {
	case failedN > 0:
		fmt.Fprintf(&b, "Status check results are ✖ (%d of %d checks failed, %d warnings)\n", failedN, total, warned)
	case warned > 0:
		fmt.Fprintf(&b, "Status check results are ✔ (%d checks, %d warnings)\n", total, warned)
	default:
		fmt.Fprintf(&b, "Status check results are ✔ (%d checks)\n", total)
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// failedChecks are the failed checks' descriptions.
func failedChecks(rep CheckReport) []string {
	var out []string
	for _, cat := range rep.Categories {
		for _, r := range cat.Checks {
			if r.Result == ResultError {
				out = append(out, r.Description)
			}
		}
	}
	return out
}

// Defaults of the check flags: from ca/config.go's lifetimes. A root
// lives a year and is rotated by hand (meshctl ca rotate), so 60 days
// leave time to plan; an issuer lives 30 days and the leader replaces it
// at five sixths of its life (5 days left), so under 3 days left means
// the rotation is 2 days late.
const (
	defaultRootMargin   = 60 * 24 * time.Hour
	defaultIssuerMargin = 72 * time.Hour
	defaultMaxClockSkew = 5 * time.Second
	caStatusStaleAfter  = 3 * time.Minute
	checkRetryEvery     = 2 * time.Second
	checkAttemptTimeout = 30 * time.Second
)

func checkCmd(kube *genericclioptions.ConfigFlags) *cobra.Command {
	var (
		output, meshNS string
		pre            bool
		wait           time.Duration
		opts           = checkOptions{staleAfter: caStatusStaleAfter}
	)
	cmd := &cobra.Command{
		Use:   "check [--pre]",
		Short: "Check that the cluster can run mesh (--pre) or that the installed mesh is healthy",
		Long: `Check the mesh, one line per check, grouped by category: ✔ passed,
‼ a warning, ✖ failed, with a hint saying what to do.

After install: the Kubernetes API is reachable, its version supported (1.29
or newer, for native sidecars) and its clock agrees with meshctl's; the
AuthorizationPolicy CRD is installed and established; the controller has a
ready replica and a live leader; the webhooks have a caBundle and answer (a
server-side dry run of an invalid policy must be refused by the policy
webhook, a valid one accepted, and a pod in a namespace labelled for
injection injected); the CA's root and issuer are valid for more than
--root-margin and --issuer-margin and its published status is fresh; every
meshed pod's proxy is ready, serves a valid SVID and trusts every root of the
CA, and enforces the policy the controller computes for its pod now (both
read from the proxy itself through the API server, the policy compared with
the controller's own computation); every policy's status counts its current
generation enforced by all the proxies it selects.

--pre, before install: the API server is reachable and its version
supported, native sidecars work (a dry-run pod keeps an init container's
restartPolicy: Always), you may create what the chart creates, and no other
install conflicts.

--wait retries failing checks until they pass or the duration has passed,
so a script can wait for a mesh to become healthy. Exit status: 0 when no
check failed (warnings allowed), 1 when one did, 2 on a usage error.`,
		Example: `  # before helm install
  meshctl check --pre

  # after: wait up to 2 minutes for every check to pass
  meshctl check --wait 2m

  # as JSON, with mesh in another namespace
  meshctl check -o json --mesh-namespace mesh`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if output != "table" && output != "json" {
				return usage(fmt.Errorf("--output %q: want table or json", output))
			}
			for name, d := range map[string]time.Duration{"--wait": wait, "--root-margin": opts.rootMargin, "--issuer-margin": opts.issuerMargin, "--max-clock-skew": opts.maxClockSkew} {
				if d < 0 {
					return usage(fmt.Errorf("%s %s: want a duration of zero or more", name, d))
				}
			}
			e, err := newCheckEnv(kube, meshNS, opts)
			if err != nil {
				return err
			}
			cats := meshCategories()
			if pre {
				cats = preCategories()
			}
			rep := runChecks(cmd.Context(), e, cats, wait, checkRetryEvery, checkAttemptTimeout)
			rep.Pre = pre
			if err := printCheckReport(cmd.OutOrStdout(), output, rep); err != nil {
				return err
			}
			if bad := failedChecks(rep); len(bad) > 0 {
				return failed(fmt.Errorf("check: %d %s failed", len(bad), plural(len(bad), "check", "checks")))
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.BoolVar(&pre, "pre", false, "check the cluster before installing mesh")
	f.DurationVar(&wait, "wait", 0, "retry failing checks until they pass or this long has passed (0: run each check once)")
	f.DurationVar(&opts.rootMargin, "root-margin", defaultRootMargin, "fail when the CA's active root expires sooner than this")
	f.DurationVar(&opts.issuerMargin, "issuer-margin", defaultIssuerMargin, "fail when the CA's issuer expires sooner than this")
	f.DurationVar(&opts.maxClockSkew, "max-clock-skew", defaultMaxClockSkew, "fail when meshctl's clock and the API server's differ by more than this")
	f.StringVarP(&output, "output", "o", "table", "output format: table or json")
	addMeshNamespaceFlag(cmd, &meshNS)
	_ = cmd.RegisterFlagCompletionFunc("output", cobra.FixedCompletions([]string{"table", "json"}, cobra.ShellCompDirectiveNoFileComp))
	return cmd
}

// newCheckEnv connects to the cluster, recording the Date header of the
// API server's answers for the clock check.
func newCheckEnv(kube *genericclioptions.ConfigFlags, meshNS string, opts checkOptions) (*checkEnv, error) {
	rc, err := kube.ToRESTConfig()
	if err != nil {
		return nil, fmt.Errorf("kubeconfig: %w (set --kubeconfig or KUBECONFIG)", err)
	}
	// Every request is bounded: discovery calls take no context.
	rc.Timeout = checkAttemptTimeout
	dates := &dateRecorder{}
	rc.Wrap(func(rt http.RoundTripper) http.RoundTripper { return dateTripper{next: rt, rec: dates} })
	cs, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return nil, fmt.Errorf("kubernetes client: %w", err)
	}
	dyn, err := dynamic.NewForConfig(rc)
	if err != nil {
		return nil, fmt.Errorf("kubernetes client: %w", err)
	}
	pc, err := policyclient.New(rc)
	if err != nil {
		return nil, fmt.Errorf("policy client: %w", err)
	}
	return &checkEnv{
		kube: cs, dyn: dyn, meshNS: meshNS, opts: opts, now: time.Now,
		policyInformer: func() cache.SharedIndexInformer { return policyclient.NewInformer(pc, 0) },
		serverDate: func(ctx context.Context) (time.Time, time.Time, time.Time, error) {
			before := time.Now()
			_, err := cs.Discovery().RESTClient().Get().AbsPath("/version").Do(ctx).Raw()
			after := time.Now()
			if err != nil {
				return time.Time{}, before, after, err
			}
			d, ok := dates.since(before)
			if !ok {
				return time.Time{}, before, after, errors.New("the API server's answer had no Date header")
			}
			return d, before, after, nil
		},
	}, nil
}

// dateRecorder keeps the Date header of the API server's last answer,
// and when it was received.
type dateRecorder struct {
	mu       sync.Mutex
	date, at time.Time
}

// dateTripper records the Date of each answer that passes through it.
type dateTripper struct {
	next http.RoundTripper
	rec  *dateRecorder
}

func (d dateTripper) RoundTrip(r *http.Request) (*http.Response, error) {
	resp, err := d.next.RoundTrip(r)
	if err == nil {
		if t, perr := http.ParseTime(resp.Header.Get("Date")); perr == nil {
			d.rec.mu.Lock()
			d.rec.date, d.rec.at = t, time.Now()
			d.rec.mu.Unlock()
		}
	}
	return resp, err
}

// since is the last Date received after t.
func (d *dateRecorder) since(t time.Time) (time.Time, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.date, !d.at.Before(t) && !d.date.IsZero()
}
