package meshcontroller

import (
	"context"
	"errors"
	"log/slog"

	"github.com/prometheus/client_golang/prometheus"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/leaderelection"
	"k8s.io/client-go/tools/leaderelection/resourcelock"
)

// LeaseName is the Lease the replicas elect their leader on.
const LeaseName = "mesh-controller"

// errLostLease ends the process: another replica leads now.
var errLostLease = errors.New("lost the leader Lease")

// lead runs work while this replica holds the Lease, until ctx ends. It
// returns nil when ctx ends, errLostLease if the Lease was lost while
// leading, or work's error.
func lead(ctx context.Context, kube kubernetes.Interface, o options, log *slog.Logger, leader prometheus.Gauge, work func(context.Context) error) error {
	lock := &resourcelock.LeaseLock{
		LeaseMeta:  metav1.ObjectMeta{Namespace: o.namespace, Name: LeaseName},
		Client:     kube.CoordinationV1(),
		LockConfig: resourcelock.ResourceLockConfig{Identity: o.replica},
	}
	workErr := make(chan error, 1)
	lctx, cancel := context.WithCancel(ctx)
	defer cancel()
	le, err := leaderelection.NewLeaderElector(leaderelection.LeaderElectionConfig{
		Lock:            lock,
		LeaseDuration:   o.leaseDuration,
		RenewDeadline:   o.renewDeadline,
		RetryPeriod:     o.retryPeriod,
		ReleaseOnCancel: true,
		Name:            LeaseName,
		Callbacks: leaderelection.LeaderCallbacks{
			OnStartedLeading: func(c context.Context) {
				leader.Set(1)
				log.Info("leading", "replica", o.replica)
				err := work(c)
				if c.Err() == nil {
					// The work ended while still leading: stop leading too.
					workErr <- err
					cancel()
				}
			},
			OnStoppedLeading: func() {
				leader.Set(0)
				log.Info("stopped leading", "replica", o.replica)
			},
			OnNewLeader: func(id string) {
				if id != o.replica {
					log.Info("another replica leads", "leader", id)
				}
			},
		},
	})
	if err != nil {
		return err
	}
	for {
		le.Run(lctx)
		select {
		case err := <-workErr:
			if err == nil {
				err = errors.New("leader work ended")
			}
			return err
		default:
		}
		if ctx.Err() != nil {
			return nil
		}
		if lctx.Err() == nil {
			// Run returns only when the context ends or the Lease is lost.
			return errLostLease
		}
		return nil
	}
}
