// Command mesh-cluster runs mesh's local Kubernetes cluster: the control
// plane (package e2e/cluster) and one node agent (package e2e/node), so
// that what you deploy runs: `mesh-cluster up --dir D [--background]` and
// `mesh-cluster down --dir D`.
package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/mesh-dev/mesh/e2e/cluster"
	"github.com/mesh-dev/mesh/e2e/meshtest"
	"github.com/mesh-dev/mesh/e2e/node"
)

func main() {
	if err := root().Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "mesh-cluster:", err)
		os.Exit(1)
	}
}

func root() *cobra.Command {
	var dir string
	cmd := &cobra.Command{
		Use:           "mesh-cluster",
		Short:         "Run a local Kubernetes control plane for mesh's tests and demo",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	cmd.PersistentFlags().StringVar(&dir, "dir", ".cache/cluster", "the cluster's working folder")
	var background bool
	up := &cobra.Command{
		Use:   "up",
		Short: "Start the control plane and a node agent; prints `export KUBECONFIG=...` as its last line",
		RunE: func(cmd *cobra.Command, _ []string) error {
			abs, err := filepath.Abs(dir)
			if err != nil {
				return err
			}
			if background {
				return upBackground(abs)
			}
			return upForeground(cmd.Context(), abs)
		},
	}
	up.Flags().BoolVar(&background, "background", false, "detach: return once the cluster is ready and leave it running")
	down := &cobra.Command{
		Use:   "down",
		Short: "Stop the cluster in --dir, including one whose owner crashed",
		RunE: func(*cobra.Command, []string) error {
			abs, err := filepath.Abs(dir)
			if err != nil {
				return err
			}
			if err := cluster.Down(abs); err != nil {
				return err
			}
			if os.Geteuid() == 0 {
				// A node agent's pod network, if one ran and died.
				if err := node.Down(); err != nil {
					return err
				}
			}
			_ = os.Remove(filepath.Join(abs, "ready"))
			fmt.Println("cluster in", abs, "is down")
			return nil
		},
	}
	cmd.AddCommand(up, down)
	return cmd
}

// upForeground runs the cluster until SIGINT or SIGTERM.
func upForeground(ctx context.Context, dir string) error {
	if ctx == nil {
		ctx = context.Background()
	}
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	c, err := cluster.New(cluster.Config{Dir: dir, Logger: log})
	if err != nil {
		return err
	}
	if err := c.Start(ctx); err != nil {
		return err
	}
	defer c.Stop()
	// A cluster you can deploy to has a node: the node agent runs the pods
	// scheduled to it (it needs root for the pod network). It stops before
	// the control plane, so its pods end while the API server still hears
	// about it.
	if os.Geteuid() != 0 {
		return errors.New("the node agent needs root (network namespaces and a bridge): run as root")
	}
	log.Info("starting the node agent", "bridge", node.Bridge, "address", node.BridgeAddr)
	stopNode, err := meshtest.StartNode(c, filepath.Join(dir, "node"), log)
	if err != nil {
		return err
	}
	defer stopNode()
	if err := os.WriteFile(filepath.Join(dir, "ready"), []byte(c.KubeconfigPath()+"\n"), 0o644); err != nil {
		return err
	}
	defer os.Remove(filepath.Join(dir, "ready"))
	fmt.Printf("export KUBECONFIG=%s\n", c.KubeconfigPath())
	<-ctx.Done()
	log.Info("stopping cluster")
	return nil
}

// upBackground starts a detached supervisor (this program, in the
// foreground mode, in its own session) and returns once it reports ready.
func upBackground(dir string) error {
	if err := os.MkdirAll(filepath.Join(dir, "logs"), 0o755); err != nil {
		return err
	}
	if err := cluster.Down(dir); err != nil {
		return fmt.Errorf("clean stale cluster: %w", err)
	}
	ready := filepath.Join(dir, "ready")
	_ = os.Remove(ready)
	self, err := os.Executable()
	if err != nil {
		return err
	}
	logPath := filepath.Join(dir, "logs", "supervisor.log")
	logf, err := os.Create(logPath)
	if err != nil {
		return err
	}
	defer logf.Close()
	cmd := exec.Command(self, "up", "--dir", dir)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start supervisor: %w", err)
	}
	if err := os.MkdirAll(filepath.Join(dir, "pids"), 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "pids", "supervisor.pid"), fmt.Appendf(nil, "%d %s\n", cmd.Process.Pid, self), 0o644); err != nil {
		return err
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	deadline := time.After(3 * time.Minute)
	for {
		if b, err := os.ReadFile(ready); err == nil && len(b) > 0 {
			fmt.Printf("cluster is up (logs in %s/logs; stop it with `mesh-cluster down --dir %s`)\n", dir, dir)
			fmt.Printf("export KUBECONFIG=%s\n", filepath.Join(dir, "kubeconfig"))
			return nil
		}
		select {
		case err := <-exited:
			b, _ := os.ReadFile(logPath)
			return fmt.Errorf("cluster supervisor exited (%v):\n%s", err, b)
		case <-deadline:
			_ = cluster.Down(dir)
			return errors.New("cluster not ready within 3m; see " + logPath)
		case <-time.After(250 * time.Millisecond):
		}
	}
}
