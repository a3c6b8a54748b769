// Package clustertest gives a test package one shared local cluster: started
// on first use, stopped after the package's tests.
//
//	func TestMain(m *testing.M) { os.Exit(clustertest.Run(m)) }
//
//	func TestX(t *testing.T) {
//		c := clustertest.Get(t)
//		...
//	}
package clustertest

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"testing"

	"github.com/mesh-dev/mesh/e2e/cluster"
	"github.com/mesh-dev/mesh/e2e/prereq"
)

var (
	mu      sync.Mutex
	shared  *cluster.Cluster
	dir     string
	started bool
	failed  error
)

// Run runs the package's tests and stops the shared cluster afterwards. Its
// folder is removed when every test passed, and kept (and named) otherwise,
// so the components' logs can be read.
func Run(m *testing.M) int {
	code := m.Run()
	mu.Lock()
	defer mu.Unlock()
	if shared != nil {
		if err := shared.Stop(); err != nil {
			fmt.Fprintf(os.Stderr, "clustertest: stop: %v\n", err)
			code = 1
		}
	}
	if dir != "" {
		if code == 0 {
			os.RemoveAll(dir)
		} else {
			fmt.Fprintf(os.Stderr, "clustertest: cluster logs kept in %s/logs\n", dir)
		}
	}
	return code
}

// Get returns the package's shared cluster, starting it on first use. The
// package must use Run in its TestMain. A cluster that failed to start fails
// every test that asks for it, with the reason.
func Get(t testing.TB) *cluster.Cluster {
	t.Helper()
	if testing.Short() {
		t.Skip("needs a local cluster; skipped in -short mode")
	}
	prereq.Command(t, "etcd")
	for _, tool := range []string{"kube-apiserver", "kube-controller-manager", "kube-scheduler"} {
		prereq.Tool(t, tool)
	}
	mu.Lock()
	defer mu.Unlock()
	if !started {
		started = true
		failed = start()
	}
	if failed != nil {
		t.Fatalf("local cluster: %v", failed)
	}
	return shared
}

func start() error {
	d, err := os.MkdirTemp("", "mesh-cluster-")
	if err != nil {
		return err
	}
	dir = d
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	c, err := cluster.New(cluster.Config{Dir: d, Logger: log})
	if err != nil {
		return err
	}
	shared = c
	return c.Start(context.Background())
}
