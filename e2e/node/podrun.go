package node

import (
	"context"
	"log/slog"
	"os/exec"
	"slices"
	"sync"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// containerKind is a container's part in the pod's lifecycle.
type containerKind int

const (
	initKind    containerKind = iota // runs to completion before the next
	sidecarKind                      // an init container with restartPolicy Always (KEP-753)
	mainKind
)

// container is one container of a running pod and what the agent knows
// of it. Only the pod's own goroutine (podRun.run) touches it.
type container struct {
	spec   corev1.Container
	kind   containerKind
	status corev1.ContainerStatus

	cmd       *exec.Cmd
	running   bool // a process is live: its exit is still to come on podRun.exits
	attempted bool // a start was tried once
	attempts  int32
	started   bool // running, and past its startup probe if it has one
	ready     bool
	done      bool      // terminated for good: no restart will follow
	restartAt time.Time // non-zero: a restart is due then (back-off)
	stopping  bool      // the agent sent it SIGTERM

	startup, readiness, liveness *prober
}

// stopRequest asks a pod's goroutine to terminate the pod. A second request
// may only bring the deadline closer (a force delete after a graceful one).
type stopRequest struct {
	mu        sync.Mutex
	requested bool
	deletion  bool // the pod is being deleted from the API
	deadline  time.Time
	poke      chan struct{} // capacity 1
}

func (s *stopRequest) request(grace time.Duration, deletion bool) {
	d := time.Now().Add(max(grace, minGrace))
	s.mu.Lock()
	if !s.requested || d.Before(s.deadline) {
		s.deadline = d
	}
	s.requested = true
	s.deletion = s.deletion || deletion
	s.mu.Unlock()
	select {
	case s.poke <- struct{}{}:
	default:
	}
}

func (s *stopRequest) get() (requested bool, deadline time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.requested, s.deadline
}

// minGrace is the least time a container gets between SIGTERM and SIGKILL,
// as the kubelet gives (its minimum grace period): a force delete (grace 0)
// too, and a sidecar when the main containers used up the pod's period.
const minGrace = 2 * time.Second

// podRun is the state of one pod's goroutine: it starts the init
// containers in order (native sidecars left running once started), then
// the main containers; it runs the probes, restarts what exits as the
// restart policies say, stops the sidecars once a Job's main containers
// are done, and terminates the pod when asked.
type podRun struct {
	n     *Node
	rt    *pod
	log   *slog.Logger
	inits []*container // spec.initContainers, sidecars among them
	mains []*container
	exits chan *container
	// next is the index in inits of the first init container not yet
	// done (or, for a sidecar, not yet started).
	next         int
	launched     bool // the main containers were started
	initFailed   bool // an init container failed and the pod never restarts
	dirty        bool // statuses changed since the last report
	reportedOnce bool
}

func newPodRun(n *Node, rt *pod, log *slog.Logger) *podRun {
	r := &podRun{n: n, rt: rt, log: log}
	for _, c := range rt.obj.Spec.InitContainers {
		kind := initKind
		if c.RestartPolicy != nil && *c.RestartPolicy == corev1.ContainerRestartPolicyAlways {
			kind = sidecarKind
		}
		r.inits = append(r.inits, &container{spec: c, kind: kind, status: waitingStatus(c, "PodInitializing", "")})
	}
	for _, c := range rt.obj.Spec.Containers {
		r.mains = append(r.mains, &container{spec: c, kind: mainKind, status: waitingStatus(c, "PodInitializing", "")})
	}
	// Each container has at most one live process, whose exit is received
	// before another is started: the waiters never block.
	r.exits = make(chan *container, len(r.inits)+len(r.mains))
	return r
}

func waitingStatus(c corev1.Container, reason, msg string) corev1.ContainerStatus {
	return corev1.ContainerStatus{Name: c.Name, Image: c.Image, State: corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{Reason: reason, Message: msg}}, Started: ptrTo(false)}
}

// run is the pod's goroutine. It returns once every process of the pod has
// ended, with the final status reported.
func (r *podRun) run(ctx context.Context) {
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	r.advance(time.Now())
	r.report(ctx)
	for {
		select {
		case c := <-r.exits:
			r.exited(c, time.Now())
		case now := <-tick.C:
			r.restartDue(now)
			r.runProbes(ctx, now)
			if _, err := r.n.refreshVolumes(ctx, r.rt, volumesTokens); err != nil && ctx.Err() == nil {
				r.log.Warn("token refresh", "err", err)
			}
		case <-r.rt.refresh:
			if _, err := r.n.refreshVolumes(ctx, r.rt, volumesObjects); err != nil && ctx.Err() == nil {
				r.log.Warn("volume refresh", "err", err)
			}
		case <-r.rt.stop.poke:
			r.terminate(ctx)
			return
		}
		r.advance(time.Now())
		if r.complete() {
			r.finish(ctx)
			return
		}
		if r.dirty {
			r.report(ctx)
		}
	}
}

// advance starts the next init container once the one before is done (a
// sidecar: once it has started), and the main containers after the last.
func (r *podRun) advance(now time.Time) {
	if r.initFailed {
		return
	}
	for r.next < len(r.inits) {
		c := r.inits[r.next]
		if !c.attempted {
			r.start(c, now)
		}
		if (c.kind == sidecarKind && c.started) || (c.kind == initKind && c.done) {
			r.next++
			continue
		}
		return
	}
	if !r.launched {
		r.launched = true
		for _, c := range r.mains {
			r.start(c, now)
		}
	}
}

// backoff is the wait before a container's attempt-th restart: 1 s
// doubling to 30 s (the kubelet's starts at 10 s; tests need less).
func backoff(attempt int32) time.Duration {
	return min(time.Duration(1<<min(max(attempt, 0), 5))*time.Second, 30*time.Second)
}

func (r *podRun) start(c *container, now time.Time) {
	c.attempted, c.restartAt = true, time.Time{}
	st := corev1.ContainerStatus{Name: c.spec.Name, Image: c.spec.Image, RestartCount: c.status.RestartCount, LastTerminationState: c.status.LastTerminationState, Started: ptrTo(false)}
	if c.status.State.Terminated != nil {
		// A restart: counted when it happens, as the kubelet does (so
		// that the last run's log is --previous by then).
		st.LastTerminationState = c.status.State
		st.RestartCount++
	}
	r.dirty = true
	bin, err := r.n.Image(c.spec.Image)
	if err != nil {
		st.State.Waiting = &corev1.ContainerStateWaiting{Reason: "ErrImagePull", Message: err.Error()}
		c.status, c.restartAt = st, now.Add(backoff(c.attempts))
		c.attempts++
		return
	}
	cmd, err := r.n.startContainer(r.rt, c.spec, bin)
	if err != nil {
		st.State.Waiting = &corev1.ContainerStateWaiting{Reason: "RunContainerError", Message: err.Error()}
		c.status, c.restartAt = st, now.Add(backoff(c.attempts))
		c.attempts++
		return
	}
	c.attempts = 0
	r.log.Debug("container started", "container", c.spec.Name)
	c.cmd, c.running, c.stopping = cmd, true, false
	c.started, c.ready = c.spec.StartupProbe == nil || c.kind == initKind, false
	st.State.Running = &corev1.ContainerStateRunning{StartedAt: metav1.NewTime(now)}
	st.Started = ptrTo(c.started)
	c.status = st
	c.startup, c.readiness, c.liveness = nil, nil, nil
	if c.kind != initKind { // regular init containers have no probes
		c.startup = newProber(c.spec.StartupProbe, now, false, false)
		c.readiness = newProber(c.spec.ReadinessProbe, now, false, true)
		c.liveness = newProber(c.spec.LivenessProbe, now, true, false)
	}
	c.ready = c.started && c.readiness == nil && c.kind != initKind
	c.status.Ready = c.ready
	exits := r.exits
	go func() {
		_ = cmd.Wait()
		exits <- c
	}()
}

// exitCode is the code the kubelet reports: the program's, or 128 plus the
// signal that ended it.
func exitCode(cmd *exec.Cmd) int32 {
	ps := cmd.ProcessState
	if ps == nil {
		return -1
	}
	if ws, ok := ps.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		return 128 + int32(ws.Signal())
	}
	return int32(ps.ExitCode())
}

// exited records a container's exit and decides its restart.
func (r *podRun) exited(c *container, now time.Time) {
	code := exitCode(c.cmd)
	c.running, c.started, c.ready = false, false, false
	reason := "Completed"
	if code != 0 {
		reason = "Error"
	}
	var startedAt metav1.Time
	if c.status.State.Running != nil {
		startedAt = c.status.State.Running.StartedAt
	}
	r.log.Info("container exited", "container", c.spec.Name, "exitCode", code)
	c.status.State = corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{ExitCode: code, Reason: reason, StartedAt: startedAt, FinishedAt: metav1.NewTime(now)}}
	c.status.Ready, c.status.Started = false, ptrTo(false)
	r.dirty = true
	if stopping, _ := r.rt.stop.get(); stopping || c.stopping {
		c.done = true
		return
	}
	policy := r.rt.obj.Spec.RestartPolicy
	var restart bool
	switch c.kind {
	case sidecarKind:
		restart = true
	case initKind:
		restart = code != 0 && policy != corev1.RestartPolicyNever
		if code != 0 && !restart {
			r.initFailed = true
		}
	case mainKind:
		restart = policy == corev1.RestartPolicyAlways || policy == "" || (policy == corev1.RestartPolicyOnFailure && code != 0)
	}
	if !restart {
		c.done = true
		return
	}
	c.restartAt = now.Add(backoff(c.status.RestartCount))
}

// restartDue starts the containers whose back-off has passed.
func (r *podRun) restartDue(now time.Time) {
	for _, c := range r.all() {
		if !c.restartAt.IsZero() && !now.Before(c.restartAt) && !c.running && !c.done {
			// An init container is retried in its turn only (it is the
			// one holding the pod back).
			r.start(c, now)
		}
	}
}

func (r *podRun) all() []*container { return append(slices.Clone(r.inits), r.mains...) }

// runProbes runs the due probes of running containers: a startup probe
// until it passes (nothing else meanwhile), then liveness and readiness.
// A container that fails its startup or liveness probe is killed, and
// restarted as its restart policy says.
func (r *podRun) runProbes(ctx context.Context, now time.Time) {
	for _, c := range r.all() {
		if !c.running || c.stopping || c.kind == initKind {
			continue
		}
		if !c.started {
			if c.startup == nil || !c.startup.due(now) {
				continue
			}
			c.startup.record(r.probe(ctx, c, c.startup.spec) == nil, now)
			switch {
			case c.startup.ok:
				c.started, r.dirty = true, true
				c.status.Started = ptrTo(true)
				c.ready = c.readiness == nil
			case c.startup.failed():
				r.log.Info("startup probe failed; restarting", "container", c.spec.Name)
				r.kill(c)
			}
			continue
		}
		if c.liveness != nil && c.liveness.due(now) {
			err := r.probe(ctx, c, c.liveness.spec)
			c.liveness.record(err == nil, now)
			if c.liveness.failed() {
				r.log.Info("liveness probe failed; restarting", "container", c.spec.Name, "err", err)
				r.kill(c)
				continue
			}
		}
		if c.readiness != nil && c.readiness.due(now) {
			c.readiness.record(r.probe(ctx, c, c.readiness.spec) == nil, now)
			c.ready = c.readiness.ok
		}
		if c.status.Ready != c.ready {
			c.status.Ready, r.dirty = c.ready, true
		}
	}
}

// probe runs one of a container's probes: an exec probe in the container,
// the others from the node to the pod's address.
func (r *podRun) probe(ctx context.Context, c *container, p *corev1.Probe) error {
	if p.Exec != nil {
		return execProbe(ctx, c.cmd.Process.Pid, effective(r.rt.obj, c.spec, nil).SecurityContext, p)
	}
	return runProbe(ctx, r.rt.ip.String(), c.spec, p)
}

// kill ends a container's processes at once (a failed liveness or
// startup probe); its exit then comes on r.exits.
func (r *podRun) kill(c *container) {
	_ = syscall.Kill(-c.cmd.Process.Pid, syscall.SIGKILL)
	c.ready = false
}

// complete reports whether the pod has run its course: an init container
// failed for good, or (restartPolicy Never or OnFailure) every main
// container has terminated for good.
func (r *podRun) complete() bool {
	if r.initFailed {
		return true
	}
	if !r.launched || len(r.mains) == 0 {
		return false
	}
	for _, c := range r.mains {
		if !c.done {
			return false
		}
	}
	return true
}

// finish ends a pod that ran its course: its sidecars are stopped (last
// started first) within the pod's grace period, their termination and the
// pod's final phase reported.
func (r *podRun) finish(ctx context.Context) {
	grace := 30 * time.Second
	if g := r.rt.obj.Spec.TerminationGracePeriodSeconds; g != nil {
		grace = time.Duration(*g) * time.Second
	}
	r.stopSidecars(time.Now().Add(grace))
	r.report(ctx)
}

// terminate ends a pod being deleted, as the kubelet 1.29+ does: SIGTERM to
// the main containers, SIGKILL to those still there at the deadline; then
// the sidecars in reverse order, each with what is left of the grace period
// (at least minGrace).
func (r *podRun) terminate(ctx context.Context) {
	var mains []*container
	for _, c := range r.mains {
		if c.running {
			mains = append(mains, c)
		}
	}
	// Regular init containers still running are ended with the mains.
	for _, c := range r.inits {
		if c.kind == initKind && c.running {
			mains = append(mains, c)
		}
	}
	r.stopGroup(mains, func() time.Time { _, d := r.rt.stop.get(); return d })
	_, deadline := r.rt.stop.get()
	r.stopSidecars(deadline)
	r.report(ctx)
}

// stopSidecars stops the running sidecars, last first, each getting until
// deadline (at least minGrace) to exit after its SIGTERM.
func (r *podRun) stopSidecars(deadline time.Time) {
	for i := len(r.inits) - 1; i >= 0; i-- {
		c := r.inits[i]
		if c.kind != sidecarKind {
			continue
		}
		c.restartAt = time.Time{}
		c.done = true
		if !c.running {
			continue
		}
		own := deadline
		if least := time.Now().Add(minGrace); own.Before(least) {
			own = least
		}
		r.stopGroup([]*container{c}, func() time.Time {
			if _, d := r.rt.stop.get(); !d.IsZero() && d.Before(own) && d.Before(deadline) {
				// A force delete (grace 0) that came meanwhile
				// shortens it too.
				return d
			}
			return own
		})
	}
}

// stopGroup sends SIGTERM to cs and waits for their exits until deadline()
// (read again when a new stop request comes), then SIGKILLs what is left
// and waits for that too.
func (r *podRun) stopGroup(cs []*container, deadline func() time.Time) {
	pending := map[*container]bool{}
	for _, c := range cs {
		if !c.running {
			continue
		}
		c.stopping, c.restartAt = true, time.Time{}
		pending[c] = true
		_ = syscall.Kill(-c.cmd.Process.Pid, syscall.SIGTERM)
	}
	killed := false
	for len(pending) > 0 {
		wait := time.Until(deadline())
		if killed {
			wait = time.Hour // SIGKILL cannot be refused: the exits come
		}
		timer := time.NewTimer(max(wait, 0))
		select {
		case c := <-r.exits:
			r.exited(c, time.Now())
			delete(pending, c)
		case <-r.rt.stop.poke:
		case <-timer.C:
			if !killed {
				killed = true
				for c := range pending {
					_ = syscall.Kill(-c.cmd.Process.Pid, syscall.SIGKILL)
				}
			}
		}
		timer.Stop()
	}
}

// phase is the pod's phase as the kubelet sets it: Failed when an init
// container failed for good; Succeeded or Failed once every main container
// has terminated for good (sidecars do not count); Running once the main
// containers were started; Pending before.
func (r *podRun) phase() corev1.PodPhase {
	if r.initFailed {
		return corev1.PodFailed
	}
	r.rt.stop.mu.Lock()
	deleted := r.rt.stop.deletion
	r.rt.stop.mu.Unlock()
	// A deleted pod whose containers are all gone is terminal too, as the
	// kubelet reports it before the pod object goes.
	if !r.complete() && !(deleted && r.allStopped()) {
		if r.launched {
			return corev1.PodRunning
		}
		return corev1.PodPending
	}
	for _, c := range r.mains {
		if t := c.status.State.Terminated; t == nil || t.ExitCode != 0 {
			return corev1.PodFailed
		}
	}
	return corev1.PodSucceeded
}

func (r *podRun) allStopped() bool {
	for _, c := range r.all() {
		if c.running {
			return false
		}
	}
	return true
}
