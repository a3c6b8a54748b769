package cluster_test

import (
	"context"
	"net"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/mesh-dev/mesh/e2e/cluster"
	"github.com/mesh-dev/mesh/e2e/prereq"
)

// TestStartAgainOnATakenPort: another process takes etcd's port between
// Start reserving it and etcd binding it; Start stops what it started and
// comes up on other ports.
func TestStartAgainOnATakenPort(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a cluster")
	}
	prereq.Command(t, "etcd")
	prereq.Tool(t, "kube-apiserver")
	calls := 0
	var taken net.Listener
	restore := cluster.SetReservePorts(func(n int, next func(int) ([]int, error)) ([]int, error) {
		calls++
		ports, err := next(n)
		if err != nil || calls > 1 {
			return ports, err
		}
		// The first port is etcd's client port: take it, as another
		// process on the machine could.
		taken, err = net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: ports[0]})
		if err != nil {
			t.Errorf("take port %d: %v", ports[0], err)
		}
		return ports, nil
	})
	defer restore()
	c, err := cluster.New(cluster.Config{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	err = c.Start(ctx)
	if taken != nil {
		defer taken.Close()
	}
	if err != nil {
		t.Fatalf("Start with a taken port: %v", err)
	}
	defer c.Stop()
	if calls != 2 {
		t.Errorf("Start reserved ports %d times, want 2 (one clash, one start)", calls)
	}
	if _, err := c.Client().CoreV1().Namespaces().Get(ctx, "default", metav1.GetOptions{}); err != nil {
		t.Fatalf("the cluster started again does not answer: %v", err)
	}
}
