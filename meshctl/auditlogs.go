package meshctl

import (
	"bufio"
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
	"k8s.io/cli-runtime/pkg/genericclioptions"

	"github.com/mesh-dev/mesh/authz/audit"
	"github.com/mesh-dev/mesh/inject"
)

func auditLogsCmd(kube *genericclioptions.ConfigFlags) *cobra.Command {
	var (
		output           string
		follow, previous bool
		tail             int64
	)
	cmd := &cobra.Command{
		Use:   "logs pod/NAME",
		Short: "Show a pod's audit records, read from its proxy's log through the API server",
		Long: `Show the audit records of a meshed pod's proxy: every denied request and
refused connection (and allowed ones, if the proxy audits them), with the
signed checkpoints of its hash chain. meshctl reads the mesh-proxy
container's log through the API server (pods/log, as kubectl logs does; it
needs "get pods/log") and keeps the audit lines.

-o jsonl prints the lines exactly as the proxy wrote them, so they can be
verified: meshctl audit logs pod/NAME -o jsonl | meshctl audit verify --bundle ROOTS.pem -
(a log the kubelet rotated lacks its start and fails verification; verify the
file in the pod's mesh-audit volume, which the proxy keeps whole).

-p reads the previous instance of the mesh-proxy container, as kubectl logs -p
does: the records a proxy wrote before it restarted (the kubelet keeps one
previous instance's log). It cannot be followed.

Exit status: 0, 1 when the pod is not meshed or has no log, 2 on a usage error.`,
		Example: `  # the denials of a pod, as a table
  meshctl audit logs -n shop pod/backend-7d9c5b-x2x8q

  # follow them as they happen
  meshctl audit logs -n shop pod/backend-7d9c5b-x2x8q -f

  # verbatim, to verify or ship
  meshctl audit logs -n shop pod/backend-7d9c5b-x2x8q -o jsonl > backend.audit.jsonl

  # what the proxy wrote before it restarted
  meshctl audit logs -n shop pod/backend-7d9c5b-x2x8q --previous`,
		Args:              cobra.ExactArgs(1),
		ValidArgsFunction: workloadArg(kube),
		RunE: func(cmd *cobra.Command, args []string) error {
			if output != "table" && output != "jsonl" {
				return usage(fmt.Errorf("--output %q: want table or jsonl", output))
			}
			opts, err := proxyLogOptions(follow, previous)
			if err != nil {
				return err
			}
			kind, name, err := parseRef(args[0])
			if err != nil {
				return err
			}
			if kind != "pod" {
				return usage(fmt.Errorf("%q: audit logs reads one pod: use pod/NAME (meshctl identity show %s lists its pods)", args[0], args[0]))
			}
			cs, ns, err := clients(kube)
			if err != nil {
				return err
			}
			ctx := cmd.Context()
			pods, err := resolvePods(ctx, cs, ns, kind, name)
			if err != nil {
				return err
			}
			if _, meshed := adminPort(&pods[0]); !meshed {
				return failed(fmt.Errorf("pod %s/%s is not meshed: it has no %s container, so no audit log", ns, name, inject.ProxyContainer))
			}
			rc, err := cs.CoreV1().Pods(ns).GetLogs(name, opts).Stream(ctx)
			if err != nil {
				return failed(fmt.Errorf("reading the %s%s container's log of pod %s/%s: %w", previousWord(previous), inject.ProxyContainer, ns, name, err))
			}
			defer rc.Close()
			return copyAudit(cmd.OutOrStdout(), rc, output, tail, follow)
		},
	}
	cmd.Flags().StringVarP(&output, "output", "o", "table", "output format: table, or jsonl (the lines verbatim)")
	cmd.Flags().BoolVarP(&follow, "follow", "f", false, "keep printing records as the proxy writes them")
	cmd.Flags().BoolVarP(&previous, "previous", "p", false, "read the previous instance of the mesh-proxy container, the one before it restarted")
	cmd.Flags().Int64Var(&tail, "tail", -1, "print only the last N records that are already written (-1: all)")
	_ = cmd.RegisterFlagCompletionFunc("output", cobra.FixedCompletions([]string{"table", "jsonl"}, cobra.ShellCompDirectiveNoFileComp))
	return cmd
}

// proxyLogOptions are the options audit logs reads the mesh-proxy
// container's log with. --previous and --follow exclude each other: the
// previous instance has ended, so there is nothing to follow.
func proxyLogOptions(follow, previous bool) (*corev1.PodLogOptions, error) {
	if follow && previous {
		return nil, usage(errors.New("audit logs: --previous reads a container that has ended: it excludes --follow"))
	}
	// No TailLines: the proxy's own log lines are interleaved, so the last
	// N lines would hold fewer than N records. copyAudit keeps the last N
	// records instead.
	return &corev1.PodLogOptions{Container: inject.ProxyContainer, Follow: follow, Previous: previous}, nil
}

func previousWord(previous bool) string {
	if previous {
		return "previous "
	}
	return ""
}

// isAuditLine says whether a log line is an audit record: the proxy's own
// log lines are JSON too, without the audit type.
func isAuditLine(line []byte) bool {
	var head struct {
		Type string `json:"type"`
	}
	return json.Unmarshal(line, &head) == nil && head.Type == audit.Type
}

// copyAudit copies the audit lines of a container log to w. With tail >= 0
// it first keeps only the last tail records of what is already there;
// with follow it then goes on until r ends.
func copyAudit(w io.Writer, r io.Reader, output string, tail int64, follow bool) error {
	var tw *tabwriter.Writer
	emit := func(line []byte) error {
		if output == "jsonl" {
			_, err := fmt.Fprintf(w, "%s\n", line)
			return err
		}
		if tw == nil {
			tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "TIME\tEVENT\tDECISION\tPOLICY\tRULE\tSOURCE\tREQUEST\tSTATUS\tREASON")
		}
		fmt.Fprintln(tw, auditRow(line))
		if follow {
			return tw.Flush()
		}
		return nil
	}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	var kept [][]byte
	for sc.Scan() {
		line := sc.Bytes()
		if !isAuditLine(line) {
			continue
		}
		if tail >= 0 && !follow {
			kept = append(kept, append([]byte(nil), line...))
			if int64(len(kept)) > tail {
				kept = kept[1:]
			}
			continue
		}
		if err := emit(line); err != nil {
			return err
		}
	}
	for _, line := range kept {
		if err := emit(line); err != nil {
			return err
		}
	}
	if tw != nil {
		if err := tw.Flush(); err != nil {
			return err
		}
	}
	if err := sc.Err(); err != nil && !errors.Is(err, context.Canceled) {
		return fmt.Errorf("reading the log: %w", err)
	}
	return nil
}

// auditRow is one record as a table row.
func auditRow(line []byte) string {
	var l struct {
		audit.Record
		Seq uint64 `json:"seq"`
	}
	if err := json.Unmarshal(line, &l); err != nil {
		return "(unreadable record: " + untrusted(err.Error()) + ")"
	}
	dash := func(s string) string {
		if s == "" {
			return "-"
		}
		return s
	}
	event := l.Event
	if event == "" {
		event = audit.EventDecision
	}
	req := "-"
	if l.HTTPMethod != "" || l.HTTPPath != "" {
		req = l.HTTPMethod + " " + l.HTTPPath
	} else if l.DestinationPort != 0 {
		req = l.Protocol + " :" + strconv.Itoa(int(l.DestinationPort))
	}
	status := "-"
	if l.HTTPStatus != 0 {
		status = strconv.Itoa(l.HTTPStatus)
	}
	reason := l.Reason
	if event == audit.EventCheckpoint {
		reason = fmt.Sprintf("signed the chain up to seq %d", l.Seq-1)
	}
	if l.DryRun {
		reason = "dry-run: " + reason
	}
	cells := []string{l.Time.UTC().Format(time.RFC3339), event, dash(l.Decision), dash(l.Policy), dash(l.Rule), dash(l.SourceIdentity), req, status, dash(reason)}
	// The log is the pod's (and a request's path is its caller's): fit for
	// a terminal, cell by cell.
	return strings.Join(untrustedAll(cells), "\t")
}
