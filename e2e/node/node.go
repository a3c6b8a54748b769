package node

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
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
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/retry"
	"k8s.io/client-go/util/workqueue"

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
	// ToolsDir holds kube-proxy, and the pinned tools mesh-e2e/<tool>
	// images map to when BinDir has no mesh-e2e-<tool>. Zero means
	// prereq.ToolsDir().
	ToolsDir string
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
}

// Node is a running node agent.
type Node struct {
	cfg   Config
	ipam  *ipam
	spawn chan func()

	// Set by Run (watchPods): the pod watch's cache, the queue of pod
	// UIDs to reconcile, the ConfigMap and Secret watches.
	podCache cache.Indexer
	queue    workqueue.TypedRateLimitingInterface[types.UID]
	watches  *objectWatches
	podsWG   sync.WaitGroup // the pods' goroutines

	mu   sync.Mutex
	pods map[types.UID]*pod

	servicesUp chan struct{} // closed once Services work (services.go)
}

type pod struct {
	obj     *corev1.Pod
	netns   string
	hostIf  string
	ip      netip.Addr
	stop    stopRequest
	refresh chan struct{} // a mounted ConfigMap or Secret may have changed
	done    chan struct{} // closed when the pod's processes and network are gone
	procs   []*exec.Cmd
	tokens  map[string]token
	mu      sync.Mutex
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
	// Pods are started and stopped on watch events, by the workers
	// watchPods starts; they stop before the pods do (stopAll above).
	stopWatch, err := n.watchPods(ctx)
	if err != nil || stopWatch == nil {
		return err
	}
	defer stopWatch()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-lease.C:
			if err := n.renewLease(ctx); err != nil && ctx.Err() == nil {
				n.cfg.Logger.Warn("lease renewal failed", "err", err)
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
	env, err := n.resolveEnv(p, rt, c)
	if err != nil {
		return nil, err
	}
	c = effective(p, c, env)
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

// resolveEnv renders a container's environment: values (with $(VAR)
// references to the variables before expanded), the downward API's fields,
// and keys of secrets and configMaps.
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
		v := expandVars(e.Value, out)
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

// killGroup SIGKILLs a container's process group.
func killGroup(pid int) error { return syscall.Kill(-pid, syscall.SIGKILL) }
