package node

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/util/retry"

	"github.com/mesh-dev/mesh/e2e/prereq"
)

// NodeIP is the node's address: the bridge's host side.
var NodeIP = strings.Split(BridgeAddr, "/")[0]

// Config configures a node agent.
type Config struct {
	// Name of the Node. Zero means "node-1".
	Name string
	// Kube talks to the API server. Required.
	Kube kubernetes.Interface
	// Dir holds the agent's state and the containers' logs. Required.
	Dir string
	// BinDir holds the binaries images map to. Zero means prereq.BinDir().
	BinDir string
	// CACertPath and CAKeyPath are the cluster CA, which signs the
	// kubelet endpoint's certificate and the API server's client
	// certificate. Zero: no kubelet endpoint (no `kubectl logs`).
	CACertPath, CAKeyPath string
	// TokenRefreshInterval renews projected service-account tokens this
	// often. Zero means at 80% of their life, as the kubelet does; tests
	// shorten it.
	TokenRefreshInterval time.Duration
	// Logger. Zero means slog.Default().
	Logger *slog.Logger
	// KubeProxyKubeconfig is the kubeconfig of kube-proxy (a user bound to
	// system:node-proxier). Zero: no kube-proxy, so ClusterIPs work only
	// in meshed pods, whose proxy resolves Services itself.
	KubeProxyKubeconfig string
	// APIServerPort is the API server's port on loopback, which the agent
	// forwards from the node's address: the kubernetes Service's endpoint.
	// Zero: pods cannot reach the API server.
	APIServerPort int
	// ToolsDir holds kube-proxy, and the binaries of mesh-e2e/<name>
	// images that are not in BinDir. Zero means prereq.ToolsDir().
	ToolsDir string
}

// Node is a running node agent.
type Node struct {
	cfg   Config
	ipam  *ipam
	spawn chan func()

	mu   sync.Mutex
	pods map[types.UID]*pod

	servicesUp chan struct{} // closed once Services work (services.go)
}

type pod struct {
	obj    *corev1.Pod
	netns  string
	hostIf string
	ip     netip.Addr
	cancel context.CancelFunc
	done   chan struct{}
	procs  []*exec.Cmd
	tokens map[string]token
	mu     sync.Mutex
}

// New validates cfg.
func New(cfg Config) (*Node, error) {
	if cfg.Kube == nil || cfg.Dir == "" {
		return nil, errors.New("node: Config.Kube and Config.Dir are required")
	}
	if cfg.Name == "" {
		cfg.Name = "node-1"
	}
	if cfg.BinDir == "" {
		cfg.BinDir = prereq.BinDir()
	}
	if cfg.ToolsDir == "" {
		cfg.ToolsDir = prereq.ToolsDir()
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if err := os.MkdirAll(filepath.Join(cfg.Dir, "logs"), 0o755); err != nil {
		return nil, err
	}
	a, err := newIPAM(cfg.Dir)
	if err != nil {
		return nil, err
	}
	return &Node{cfg: cfg, ipam: a, pods: map[types.UID]*pod{}, spawn: make(chan func()), servicesUp: make(chan struct{})}, nil
}

// ToolsImage runs its container's command from the node's PATH, for init
// containers that need system tools (iptables, ip, sh).
const ToolsImage = "mesh-e2e/tools"

// Image maps an image to the binary that runs it. For ToolsImage it
// returns "", and the container's command names the program.
func (n *Node) Image(image string) (string, error) {
	name, _, _ := strings.Cut(image, "@")
	if i := strings.LastIndex(name, ":"); i > strings.LastIndex(name, "/") {
		name = name[:i]
	}
	var bin string
	switch {
	case name == ToolsImage:
		return "", nil
	case strings.HasPrefix(name, "mesh-e2e/"):
		// bin/mesh-e2e-<x> (mesh's test programs), else a pinned tool
		// (mesh-e2e/coredns is .cache/bin/coredns).
		x := strings.TrimPrefix(name, "mesh-e2e/")
		bin = "mesh-e2e-" + x
		if _, err := os.Stat(filepath.Join(n.cfg.BinDir, bin)); err != nil {
			if p := filepath.Join(n.cfg.ToolsDir, x); x != "" && !strings.Contains(x, "/") {
				if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() {
					return p, nil
				}
			}
		}
	case strings.HasPrefix(name, "mesh/"):
		bin = strings.TrimPrefix(name, "mesh/")
	default:
		return "", fmt.Errorf("image %q is not mapped to a local binary (mesh-e2e/echo or mesh/<name>)", image)
	}
	p := filepath.Join(n.cfg.BinDir, bin)
	if _, err := os.Stat(p); err != nil {
		return "", fmt.Errorf("image %q: %s not built (make build)", image, p)
	}
	return p, nil
}

// Run registers the node, runs the pods scheduled to it until ctx ends,
// then stops them all and removes the pod network.
func (n *Node) Run(ctx context.Context) error {
	// Processes are started from one locked thread, so their parent-death
	// signal fires when the agent dies, not when some Go thread exits.
	unlock, err := lockNetwork()
	if err != nil {
		return err
	}
	defer unlock()
	// It is stopped only after every pod is, so no pod waits on it.
	spawnDone := make(chan struct{})
	go func() {
		runtime.LockOSThread()
		defer close(spawnDone)
		for f := range n.spawn {
			f()
		}
	}()
	defer func() {
		n.stopAll()
		_ = ipcmd("link", "del", Bridge)
		close(n.spawn)
		<-spawnDone
	}()
	if err := setupBridge(); err != nil {
		return err
	}
	if err := n.register(ctx); err != nil {
		return err
	}
	stopServices, err := n.startServices(ctx)
	if err != nil {
		return err
	}
	defer stopServices()
	if n.cfg.CACertPath != "" {
		kctx, stopKubelet := context.WithCancel(ctx)
		kdone := make(chan error, 1)
		go func() { kdone <- n.serveKubelet(kctx) }()
		defer func() {
			stopKubelet()
			if err := <-kdone; err != nil {
				n.cfg.Logger.Error("kubelet endpoint", "err", err)
			}
		}()
	}
	lease := time.NewTicker(10 * time.Second)
	defer lease.Stop()
	sync := time.NewTicker(300 * time.Millisecond)
	defer sync.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-lease.C:
			if err := n.renewLease(ctx); err != nil && ctx.Err() == nil {
				n.cfg.Logger.Warn("lease renewal failed", "err", err)
			}
		case <-sync.C:
			if err := n.sync(ctx); err != nil && ctx.Err() == nil {
				n.cfg.Logger.Warn("pod sync failed", "err", err)
			}
		}
	}
}

func (n *Node) register(ctx context.Context) error {
	node := &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: n.cfg.Name, Labels: map[string]string{"kubernetes.io/hostname": n.cfg.Name, "kubernetes.io/os": "linux"}},
	}
	_, err := n.cfg.Kube.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("node: register: %w", err)
	}
	if err := n.updateNodeStatus(ctx); err != nil {
		return err
	}
	return n.renewLease(ctx)
}

func (n *Node) updateNodeStatus(ctx context.Context) error {
	return retry.RetryOnConflict(retry.DefaultRetry, func() error {
		node, err := n.cfg.Kube.CoreV1().Nodes().Get(ctx, n.cfg.Name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		now := metav1.Now()
		node.Status.Capacity = corev1.ResourceList{
			corev1.ResourceCPU: resource.MustParse("8"), corev1.ResourceMemory: resource.MustParse("16Gi"), corev1.ResourcePods: resource.MustParse("110"),
		}
		node.Status.Allocatable = node.Status.Capacity
		node.Status.Addresses = []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: NodeIP}, {Type: corev1.NodeHostName, Address: n.cfg.Name}}
		node.Status.Conditions = []corev1.NodeCondition{{
			Type: corev1.NodeReady, Status: corev1.ConditionTrue, Reason: "KubeletReady", Message: "mesh e2e node agent is ready",
			LastHeartbeatTime: now, LastTransitionTime: now,
		}}
		if n.cfg.CACertPath != "" {
			node.Status.DaemonEndpoints.KubeletEndpoint.Port = KubeletPort
		}
		node.Status.NodeInfo = corev1.NodeSystemInfo{KubeletVersion: "v1.37.2", OperatingSystem: "linux", Architecture: runtime.GOARCH}
		_, err = n.cfg.Kube.CoreV1().Nodes().UpdateStatus(ctx, node, metav1.UpdateOptions{})
		return err
	})
}

func (n *Node) renewLease(ctx context.Context) error {
	leases := n.cfg.Kube.CoordinationV1().Leases(corev1.NamespaceNodeLease)
	now := metav1.NewMicroTime(time.Now())
	dur := int32(40)
	l, err := leases.Get(ctx, n.cfg.Name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		holder := n.cfg.Name
		_, err = leases.Create(ctx, &coordinationv1.Lease{
			ObjectMeta: metav1.ObjectMeta{Name: n.cfg.Name},
			Spec:       coordinationv1.LeaseSpec{HolderIdentity: &holder, LeaseDurationSeconds: &dur, RenewTime: &now},
		}, metav1.CreateOptions{})
		return err
	}
	if err != nil {
		return err
	}
	l.Spec.RenewTime = &now
	_, err = leases.Update(ctx, l, metav1.UpdateOptions{})
	return err
}

// sync starts the pods newly scheduled here and stops the deleted ones.
func (n *Node) sync(ctx context.Context) error {
	list, err := n.cfg.Kube.CoreV1().Pods("").List(ctx, metav1.ListOptions{FieldSelector: "spec.nodeName=" + n.cfg.Name})
	if err != nil {
		return err
	}
	seen := map[types.UID]bool{}
	for i := range list.Items {
		p := &list.Items[i]
		seen[p.UID] = true
		n.mu.Lock()
		rt, running := n.pods[p.UID]
		n.mu.Unlock()
		switch {
		case p.DeletionTimestamp != nil:
			if running {
				n.stopPod(rt, gracePeriod(p))
			}
			// As the kubelet does: once the containers are gone, the pod
			// object goes too.
			zero := int64(0)
			_ = n.cfg.Kube.CoreV1().Pods(p.Namespace).Delete(ctx, p.Name, metav1.DeleteOptions{GracePeriodSeconds: &zero, Preconditions: &metav1.Preconditions{UID: &p.UID}})
		case !running && p.Status.Phase != corev1.PodSucceeded && p.Status.Phase != corev1.PodFailed:
			n.startPod(ctx, p)
		}
	}
	n.mu.Lock()
	var gone []*pod
	for uid, rt := range n.pods {
		if !seen[uid] {
			gone = append(gone, rt)
		}
	}
	n.mu.Unlock()
	for _, rt := range gone {
		n.stopPod(rt, 0)
	}
	return nil
}

func gracePeriod(p *corev1.Pod) time.Duration {
	if p.DeletionGracePeriodSeconds != nil {
		return time.Duration(*p.DeletionGracePeriodSeconds) * time.Second
	}
	if p.Spec.TerminationGracePeriodSeconds != nil {
		return time.Duration(*p.Spec.TerminationGracePeriodSeconds) * time.Second
	}
	return 30 * time.Second
}

func hostIf(uid types.UID) string {
	sum := sha256.Sum256([]byte(uid))
	return "vh" + hex.EncodeToString(sum[:])[:10]
}

func (n *Node) startPod(ctx context.Context, p *corev1.Pod) {
	log := n.cfg.Logger.With("pod", p.Namespace+"/"+p.Name)
	ip, err := n.ipam.allocate(string(p.UID))
	if err != nil {
		log.Error("no pod IP", "err", err)
		return
	}
	rt := &pod{obj: p.DeepCopy(), netns: NetnsName(p.Namespace, p.Name), hostIf: hostIf(p.UID), ip: ip, done: make(chan struct{})}
	if err := addPodNetwork(rt.netns, rt.hostIf, ip); err != nil {
		log.Error("pod network", "err", err)
		_ = n.ipam.release(string(p.UID))
		return
	}
	if err := n.setupVolumes(ctx, rt); err != nil {
		log.Error("volumes", "err", err)
		n.teardownVolumes(rt.obj)
		_ = removePodNetwork(rt.netns, rt.hostIf)
		_ = n.ipam.release(string(p.UID))
		return
	}
	pctx, cancel := context.WithCancel(context.Background())
	rt.cancel = cancel
	n.mu.Lock()
	n.pods[p.UID] = rt
	n.mu.Unlock()
	go n.runPod(pctx, rt, log)
}

// runPod starts the containers, reports status, and restarts containers
// that exit, until the pod is stopped.
func (n *Node) runPod(ctx context.Context, rt *pod, log *slog.Logger) {
	defer close(rt.done)
	p := rt.obj
	statuses := make([]corev1.ContainerStatus, len(p.Spec.Containers))
	exits := make(chan int, len(p.Spec.Containers))
	restarts := make([]int32, len(p.Spec.Containers))
	cmds := make([]*exec.Cmd, len(p.Spec.Containers))
	started := make([]time.Time, len(p.Spec.Containers))
	lastLive := make([]time.Time, len(p.Spec.Containers))
	liveFails := make([]int32, len(p.Spec.Containers))
	start := func(i int) {
		c := p.Spec.Containers[i]
		st := corev1.ContainerStatus{Name: c.Name, Image: c.Image, RestartCount: restarts[i]}
		bin, err := n.Image(c.Image)
		if err != nil {
			st.State.Waiting = &corev1.ContainerStateWaiting{Reason: "ErrImagePull", Message: err.Error()}
			statuses[i] = st
			return
		}
		cmd, err := n.startContainer(rt, c, bin)
		if err != nil {
			st.State.Waiting = &corev1.ContainerStateWaiting{Reason: "RunContainerError", Message: err.Error()}
			statuses[i] = st
			return
		}
		st.State.Running = &corev1.ContainerStateRunning{StartedAt: metav1.Now()}
		st.Started = ptrTo(true)
		statuses[i] = st
		cmds[i], started[i], liveFails[i] = cmd, time.Now(), 0
		go func() { _ = cmd.Wait(); exits <- i }()
	}
	initStatuses, ok := n.runInit(ctx, rt, log)
	if !ok {
		n.report(ctx, rt, statuses, initStatuses)
		return
	}
	for i := range p.Spec.Containers {
		start(i)
	}
	n.report(ctx, rt, statuses, initStatuses)
	probe := time.NewTicker(500 * time.Millisecond)
	defer probe.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case i := <-exits:
			code := int32(-1)
			if ps := cmds[i].ProcessState; ps != nil {
				code = int32(ps.ExitCode())
			}
			log.Info("container exited", "container", p.Spec.Containers[i].Name, "exitCode", code)
			reason := "Completed"
			if code != 0 {
				reason = "Error"
			}
			statuses[i].Ready, statuses[i].State = false, corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{ExitCode: code, Reason: reason, FinishedAt: metav1.Now()}}
			restart := p.Spec.RestartPolicy == corev1.RestartPolicyAlways || p.Spec.RestartPolicy == "" ||
				(p.Spec.RestartPolicy == corev1.RestartPolicyOnFailure && code != 0)
			if restart {
				backoff := min(time.Duration(1<<min(restarts[i], 5))*time.Second, 30*time.Second)
				restarts[i]++
				select {
				case <-ctx.Done():
					return
				case <-time.After(backoff):
				}
				start(i)
			}
			n.report(ctx, rt, statuses, initStatuses)
		case <-probe.C:
			if _, err := n.refreshVolumes(ctx, rt, false); err != nil && ctx.Err() == nil {
				log.Warn("volume refresh", "err", err)
			}
			changed := false
			for i, c := range p.Spec.Containers {
				if n.livenessFailed(ctx, rt, c, started[i], &lastLive[i], &liveFails[i]) && cmds[i] != nil && statuses[i].State.Running != nil {
					log.Info("liveness probe failed; restarting", "container", c.Name)
					_ = syscall.Kill(-cmds[i].Process.Pid, syscall.SIGKILL)
					liveFails[i] = 0
				}
				ready := statuses[i].State.Running != nil && n.probe(ctx, rt, c)
				if ready != statuses[i].Ready {
					statuses[i].Ready, changed = ready, true
				}
			}
			if changed {
				n.report(ctx, rt, statuses, initStatuses)
			}
		}
	}
}

// runInit runs the init containers in order, each to completion (retrying
// a failure with back-off unless the pod never restarts); a native sidecar
// (an init container with restartPolicy Always) is started and left
// running. It reports false when the pod cannot proceed.
func (n *Node) runInit(ctx context.Context, rt *pod, log *slog.Logger) ([]corev1.ContainerStatus, bool) {
	p := rt.obj
	statuses := make([]corev1.ContainerStatus, len(p.Spec.InitContainers))
	for i, c := range p.Spec.InitContainers {
		statuses[i] = corev1.ContainerStatus{Name: c.Name, Image: c.Image}
		for attempt := 0; ; attempt++ {
			bin, err := n.Image(c.Image)
			if err != nil {
				statuses[i].State.Waiting = &corev1.ContainerStateWaiting{Reason: "ErrImagePull", Message: err.Error()}
				return statuses, false
			}
			cmd, err := n.startContainer(rt, c, bin)
			if err != nil {
				statuses[i].State.Waiting = &corev1.ContainerStateWaiting{Reason: "RunContainerError", Message: err.Error()}
				return statuses, false
			}
			if c.RestartPolicy != nil && *c.RestartPolicy == corev1.ContainerRestartPolicyAlways {
				go func() { _ = cmd.Wait() }() // reaped when stopPod ends it
				statuses[i].State.Running = &corev1.ContainerStateRunning{StartedAt: metav1.Now()}
				statuses[i].Ready = true
				break
			}
			err = cmd.Wait()
			code := int32(0)
			if ee, ok := err.(*exec.ExitError); ok {
				code = int32(ee.ExitCode())
			} else if err != nil {
				code = -1
			}
			statuses[i].State = corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{ExitCode: code, Reason: map[bool]string{true: "Completed", false: "Error"}[code == 0], FinishedAt: metav1.Now()}}
			if code == 0 {
				break
			}
			log.Warn("init container failed", "container", c.Name, "exitCode", code)
			statuses[i].RestartCount++
			if p.Spec.RestartPolicy == corev1.RestartPolicyNever {
				return statuses, false
			}
			select {
			case <-ctx.Done():
				return statuses, false
			case <-time.After(min(time.Duration(1<<min(attempt, 5))*time.Second, 30*time.Second)):
			}
		}
	}
	return statuses, true
}

// livenessFailed runs a container's HTTP liveness probe when it is due and
// reports whether it has now failed failureThreshold times in a row.
func (n *Node) livenessFailed(ctx context.Context, rt *pod, c corev1.Container, started time.Time, last *time.Time, fails *int32) bool {
	pr := c.LivenessProbe
	if pr == nil || pr.HTTPGet == nil || started.IsZero() {
		return false
	}
	period := time.Duration(max(pr.PeriodSeconds, 1)) * time.Second
	if pr.PeriodSeconds == 0 {
		period = 10 * time.Second
	}
	now := time.Now()
	if now.Before(started.Add(time.Duration(pr.InitialDelaySeconds)*time.Second)) || now.Before(last.Add(period)) {
		return false
	}
	*last = now
	if n.httpProbe(ctx, rt, c, pr.HTTPGet) {
		*fails = 0
		return false
	}
	*fails++
	threshold := pr.FailureThreshold
	if threshold == 0 {
		threshold = 3
	}
	return *fails >= threshold
}

// probe runs a container's HTTP readiness probe from the node's address, as
// a kubelet does; a container without one is ready once running.
func (n *Node) probe(ctx context.Context, rt *pod, c corev1.Container) bool {
	if c.ReadinessProbe == nil || c.ReadinessProbe.HTTPGet == nil {
		return true
	}
	return n.httpProbe(ctx, rt, c, c.ReadinessProbe.HTTPGet)
}

// httpProbe sends a probe's GET from the node's address to the pod.
func (n *Node) httpProbe(ctx context.Context, rt *pod, c corev1.Container, g *corev1.HTTPGetAction) bool {
	port := g.Port.IntValue()
	if port == 0 {
		for _, cp := range c.Ports {
			if cp.Name == g.Port.StrVal {
				port = int(cp.ContainerPort)
			}
		}
	}
	cctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(cctx, http.MethodGet, fmt.Sprintf("http://%s:%d%s", rt.ip, port, g.Path), nil)
	if err != nil {
		return false
	}
	req.Header.Set("User-Agent", "kube-probe/1.37")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode >= 200 && resp.StatusCode < 400
}

func (n *Node) startContainer(rt *pod, c corev1.Container, bin string) (*exec.Cmd, error) {
	p := rt.obj
	if err := writeResolvConf(p, rt.netns); err != nil {
		return nil, err
	}
	args := []string{"netns", "exec", rt.netns}
	if len(c.VolumeMounts) > 0 {
		script, err := n.mountScript(p, c)
		if err != nil {
			return nil, err
		}
		args = append(args, "/bin/sh", "-c", script, "mount-volumes")
	}
	args = append(args, capabilityArgs(c)...)
	if sc := c.SecurityContext; sc != nil && sc.RunAsUser != nil && *sc.RunAsUser != 0 {
		gid := *sc.RunAsUser
		if sc.RunAsGroup != nil {
			gid = *sc.RunAsGroup
		}
		args = append(args, "setpriv", "--reuid", strconv.FormatInt(*sc.RunAsUser, 10), "--regid", strconv.FormatInt(gid, 10), "--clear-groups", "--")
	}
	switch {
	case bin == "":
		// The tools image: the command is a program on the node's PATH.
		if len(c.Command) == 0 {
			return nil, fmt.Errorf("container %q of image %s has no command", c.Name, ToolsImage)
		}
		prog, err := exec.LookPath(c.Command[0])
		if err != nil {
			return nil, fmt.Errorf("container %q: %w", c.Name, err)
		}
		args = append(args, prog)
		args = append(args, c.Command[1:]...)
	case len(c.Command) > 0:
		// command replaces the image's entrypoint: the binary is the image.
		args = append(args, bin)
		args = append(args, c.Command[1:]...)
	default:
		args = append(args, bin)
	}
	args = append(args, c.Args...)
	cmd := exec.Command("ip", args...)
	cmd.Env = []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
	env, err := n.resolveEnv(p, rt, c)
	if err != nil {
		return nil, err
	}
	cmd.Env = append(cmd.Env, env...)
	logPath := n.logPath(p.Namespace, p.Name, c.Name, false)
	if _, err := os.Stat(logPath); err == nil {
		// A restart: the last run's output becomes --previous.
		_ = os.Rename(logPath, n.logPath(p.Namespace, p.Name, c.Name, true))
	}
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	errc := make(chan error, 1)
	n.spawn <- func() { errc <- cmd.Start() }
	if err := <-errc; err != nil {
		return nil, err
	}
	rt.mu.Lock()
	rt.procs = append(rt.procs, cmd)
	rt.mu.Unlock()
	return cmd, nil
}

// resolveEnv renders a container's environment: values, the downward
// API's fields, and keys of secrets and configMaps.
func (n *Node) resolveEnv(p *corev1.Pod, rt *pod, c corev1.Container) ([]string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	// Services' variables first: the container's own, later, win. Without
	// them (the API server did not answer) the container still starts.
	out, err := n.serviceEnv(ctx, p)
	if err != nil {
		n.cfg.Logger.Warn("no Service environment", "pod", p.Namespace+"/"+p.Name, "err", err)
	}
	for _, e := range c.Env {
		v := e.Value
		switch from := e.ValueFrom; {
		case from == nil:
		case from.FieldRef != nil:
			switch from.FieldRef.FieldPath {
			case "metadata.name":
				v = p.Name
			case "metadata.namespace":
				v = p.Namespace
			case "metadata.uid":
				v = string(p.UID)
			case "status.podIP":
				v = rt.ip.String()
			case "status.hostIP":
				v = NodeIP
			case "spec.serviceAccountName":
				v = p.Spec.ServiceAccountName
			case "spec.nodeName":
				v = p.Spec.NodeName
			default:
				return nil, fmt.Errorf("env %s: fieldRef %q is not supported", e.Name, from.FieldRef.FieldPath)
			}
		case from.SecretKeyRef != nil:
			files, err := n.secretFiles(ctx, p.Namespace, from.SecretKeyRef.Name, nil, from.SecretKeyRef.Optional)
			if err != nil {
				return nil, fmt.Errorf("env %s: secret %s: %w", e.Name, from.SecretKeyRef.Name, err)
			}
			v = string(files[from.SecretKeyRef.Key])
		case from.ConfigMapKeyRef != nil:
			files, err := n.configMapFiles(ctx, p.Namespace, from.ConfigMapKeyRef.Name, nil, from.ConfigMapKeyRef.Optional)
			if err != nil {
				return nil, fmt.Errorf("env %s: configMap %s: %w", e.Name, from.ConfigMapKeyRef.Name, err)
			}
			v = string(files[from.ConfigMapKeyRef.Key])
		}
		out = append(out, e.Name+"="+v)
	}
	return out, nil
}

// defaultCaps are the capabilities a root container has unless its
// securityContext adds or drops some (the container runtimes' default).
var defaultCaps = []string{"chown", "dac_override", "fowner", "fsetid", "kill", "setgid", "setuid", "setpcap", "net_bind_service", "net_raw", "sys_chroot", "mknod", "audit_write", "setfcap"}

// capabilityArgs bounds a container's capabilities with setpriv: a
// non-root container keeps none, a root one the defaults plus what it adds
// minus what it drops.
func capabilityArgs(c corev1.Container) []string {
	sc := c.SecurityContext
	if sc != nil && sc.RunAsUser != nil && *sc.RunAsUser != 0 {
		return nil // setpriv --reuid to a non-root user drops every capability
	}
	caps := map[string]bool{}
	for _, k := range defaultCaps {
		caps[k] = true
	}
	if sc != nil && sc.Capabilities != nil {
		for _, d := range sc.Capabilities.Drop {
			if strings.EqualFold(string(d), "ALL") {
				caps = map[string]bool{}
			}
			delete(caps, strings.ToLower(string(d)))
		}
		for _, a := range sc.Capabilities.Add {
			caps[strings.ToLower(string(a))] = true
		}
	}
	set := "-all"
	for k := range caps {
		set += ",+" + k
	}
	return []string{"setpriv", "--bounding-set", set, "--"}
}

// report writes the pod's status as a kubelet would.
func (n *Node) report(ctx context.Context, rt *pod, statuses, initStatuses []corev1.ContainerStatus) {
	allReady := len(statuses) > 0
	for _, s := range statuses {
		allReady = allReady && s.Ready
	}
	cond := func(t corev1.PodConditionType, ok bool) corev1.PodCondition {
		s := corev1.ConditionFalse
		if ok {
			s = corev1.ConditionTrue
		}
		return corev1.PodCondition{Type: t, Status: s, LastTransitionTime: metav1.Now()}
	}
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		cur, err := n.cfg.Kube.CoreV1().Pods(rt.obj.Namespace).Get(ctx, rt.obj.Name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		cur.Status.Phase = phase(rt.obj, statuses)
		cur.Status.HostIP = NodeIP
		cur.Status.HostIPs = []corev1.HostIP{{IP: NodeIP}}
		cur.Status.PodIP = rt.ip.String()
		cur.Status.PodIPs = []corev1.PodIP{{IP: rt.ip.String()}}
		if cur.Status.StartTime == nil {
			now := metav1.Now()
			cur.Status.StartTime = &now
		}
		cur.Status.Conditions = []corev1.PodCondition{
			cond(corev1.PodScheduled, true), cond(corev1.PodInitialized, initDone(initStatuses)),
			cond(corev1.ContainersReady, allReady), cond(corev1.PodReady, allReady),
		}
		cur.Status.ContainerStatuses = statuses
		cur.Status.InitContainerStatuses = initStatuses
		_, err = n.cfg.Kube.CoreV1().Pods(cur.Namespace).UpdateStatus(ctx, cur, metav1.UpdateOptions{})
		return err
	})
	if err != nil && ctx.Err() == nil && !apierrors.IsNotFound(err) {
		n.cfg.Logger.Warn("pod status", "pod", rt.obj.Namespace+"/"+rt.obj.Name, "err", err)
	}
}

// stopPod terminates the pod's processes (SIGTERM, then SIGKILL after
// grace), and removes its network and address.
func (n *Node) stopPod(rt *pod, grace time.Duration) {
	rt.cancel()
	<-rt.done
	rt.mu.Lock()
	procs := rt.procs
	rt.mu.Unlock()
	for _, c := range procs {
		_ = syscall.Kill(-c.Process.Pid, syscall.SIGTERM)
	}
	deadline := time.Now().Add(grace)
	for _, c := range procs {
		for alive(c.Process.Pid) && time.Now().Before(deadline) {
			time.Sleep(50 * time.Millisecond)
		}
		_ = syscall.Kill(-c.Process.Pid, syscall.SIGKILL)
	}
	for _, c := range procs {
		for alive(c.Process.Pid) {
			time.Sleep(20 * time.Millisecond)
		}
	}
	n.teardownVolumes(rt.obj)
	if err := removePodNetwork(rt.netns, rt.hostIf); err != nil {
		n.cfg.Logger.Warn("remove pod network", "netns", rt.netns, "err", err)
	}
	_ = n.ipam.release(string(rt.obj.UID))
	n.mu.Lock()
	delete(n.pods, rt.obj.UID)
	n.mu.Unlock()
}

func (n *Node) stopAll() {
	n.mu.Lock()
	var all []*pod
	for _, rt := range n.pods {
		all = append(all, rt)
	}
	n.mu.Unlock()
	for _, rt := range all {
		n.stopPod(rt, 5*time.Second)
	}
}

// alive reports whether pid is a live process (reaped or zombie is not).
func alive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	i := strings.LastIndexByte(string(b), ')')
	return i < 0 || i+2 >= len(b) || b[i+2] != 'Z'
}

func ptrTo[T any](v T) *T { return &v }

// phase is the pod's phase from its containers: Running once one has
// started; Succeeded or Failed once all have ended for good (a Job's pod).
func phase(p *corev1.Pod, statuses []corev1.ContainerStatus) corev1.PodPhase {
	running, ended, failed := false, 0, false
	for _, st := range statuses {
		switch {
		case st.State.Running != nil:
			running = true
		case st.State.Terminated != nil:
			ended++
			failed = failed || st.State.Terminated.ExitCode != 0
		}
	}
	final := p.Spec.RestartPolicy == corev1.RestartPolicyNever || (p.Spec.RestartPolicy == corev1.RestartPolicyOnFailure && !failed)
	switch {
	case len(statuses) > 0 && ended == len(statuses) && final && failed:
		return corev1.PodFailed
	case len(statuses) > 0 && ended == len(statuses) && final:
		return corev1.PodSucceeded
	case running || ended > 0:
		return corev1.PodRunning
	}
	return corev1.PodPending
}

func initDone(statuses []corev1.ContainerStatus) bool {
	for _, s := range statuses {
		if s.State.Running == nil && (s.State.Terminated == nil || s.State.Terminated.ExitCode != 0) {
			return false
		}
	}
	return true
}
