// Package meshtest runs mesh on the local cluster for end-to-end tests and
// the demo: a node agent, mesh-controller replicas as processes, and pods
// with mesh's sidecars, injected by hand from one template until the
// injector exists (the template is the injector's model).
package meshtest

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"

	"github.com/mesh-dev/mesh/controlplane/trustbundle"
	"github.com/mesh-dev/mesh/e2e/cluster"
	"github.com/mesh-dev/mesh/e2e/node"
	"github.com/mesh-dev/mesh/e2e/prereq"
)

// IdentityPort is where controllers serve the identity service and the
// control-plane streams, on the node's address.
const IdentityPort = 15012

// StartNode runs a node agent, with kube-proxy and the API server's
// forwarder, until the returned stop is called, and waits for its bridge
// and its Services.
func StartNode(c *cluster.Cluster, dir string, log *slog.Logger) (stop func(), err error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("node: %w", err)
	}
	// kube-proxy's identity: the user the bootstrap policy binds to
	// system:node-proxier.
	proxyKubeconfig := filepath.Join(dir, "kube-proxy.kubeconfig")
	if err := c.WriteKubeconfig(proxyKubeconfig, "system:kube-proxy", nil); err != nil {
		return nil, err
	}
	n, err := node.New(node.Config{Kube: c.Client(), Dir: dir, CACertPath: c.CACertPath(), CAKeyPath: c.CAKeyPath(), Logger: log,
		KubeProxyKubeconfig: proxyKubeconfig, APIServerPort: c.APIServerPort()})
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- n.Run(ctx) }()
	stop = func() { cancel(); <-done }
	// The agent registers its Node once it owns the machine's pod network,
	// which another test package's agent may hold for a while.
	if err := WaitFor(context.Background(), 15*time.Minute, func() error {
		select {
		case err := <-done:
			done <- err // for stop
			return fmt.Errorf("node agent ended: %w", err)
		default:
		}
		nodes, err := c.Client().CoreV1().Nodes().List(context.Background(), metav1.ListOptions{})
		if err != nil || len(nodes.Items) == 0 {
			return fmt.Errorf("node not registered: %v", err)
		}
		select {
		case <-n.ServicesReady():
		default:
			return fmt.Errorf("no kube-proxy rules yet")
		}
		return exec.Command("ip", "addr", "show", node.Bridge).Run()
	}); err != nil {
		stop()
		return nil, fmt.Errorf("node: %w", err)
	}
	return stop, nil
}

// Controller is a mesh-controller process.
type Controller struct {
	Name string
	cmd  *exec.Cmd
	log  *SyncBuffer
	done chan struct{}
}

// StartController starts replica name of mesh-controller listening on
// addr (host:port of the identity service), with extra flags.
func StartController(c *cluster.Cluster, name, addr string, extra ...string) (*Controller, error) {
	args := append([]string{"--kubeconfig", c.KubeconfigPath(), "--identity-addr", addr,
		"--metrics-addr", "127.0.0.1:0", "--replica", name,
		"--leader-lease-duration", "4s", "--leader-renew-deadline", "3s", "--leader-retry-period", "500ms",
		// Replicas share the host: no webhook server unless a test asks
		// for one (extra comes after, and the last flag wins).
		"--webhook-addr", "-"}, extra...)
	cmd := exec.Command(filepath.Join(prereq.BinDir(), "mesh-controller"), args...)
	ctl := &Controller{Name: name, cmd: cmd, log: &SyncBuffer{}, done: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = ctl.log, ctl.log
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("mesh-controller: %w", err)
	}
	go func() { _ = cmd.Wait(); close(ctl.done) }()
	if err := WaitFor(context.Background(), 30*time.Second, func() error {
		select {
		case <-ctl.done:
			return fmt.Errorf("exited")
		default:
		}
		conn, err := net.DialTimeout("tcp", addr, time.Second)
		if err != nil {
			return err
		}
		return conn.Close()
	}); err != nil {
		ctl.Kill()
		return nil, fmt.Errorf("mesh-controller %s did not come up: %w\n%s", name, err, ctl.Log())
	}
	return ctl, nil
}

// Log is everything the controller wrote.
func (c *Controller) Log() string { return c.log.String() }

// Kill ends the process at once, as a crash would (no Lease release).
func (c *Controller) Kill() {
	_ = c.cmd.Process.Kill()
	<-c.done
}

// Stop ends the process as a rolling update would (SIGTERM).
func (c *Controller) Stop() {
	_ = c.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-c.done:
	case <-time.After(15 * time.Second):
		c.Kill()
	}
}

// Exited reports whether the process has ended.
func (c *Controller) Exited() bool {
	select {
	case <-c.done:
		return true
	default:
		return false
	}
}

// PodOptions shape a meshed pod.
type PodOptions struct {
	// ServiceAccount; zero means the pod's name.
	ServiceAccount string
	// Labels; zero means app=<name>.
	Labels map[string]string
	// ProxyArgs are added to mesh-proxy run's.
	ProxyArgs []string
	// Identity is the controllers' address; zero means the node's
	// address on IdentityPort.
	Identity string
}

// MeshedPod is an echo pod (package e2e/cmd/mesh-e2e-echo) with mesh's
// init container and proxy sidecar, as the injector will write them: the
// proxy gets everything (policy, destinations, trust bundle) from the
// controller, starting from the namespace's mesh-trust-bundle ConfigMap.
func MeshedPod(ns, name string, o PodOptions) *corev1.Pod {
	root, proxyUID, appUID := int64(0), int64(1337), int64(1000)
	always := corev1.ContainerRestartPolicyAlways
	exp := int64(3600)
	fieldEnv := func(name, path string) corev1.EnvVar {
		return corev1.EnvVar{Name: name, ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: path}}}
	}
	if o.ServiceAccount == "" {
		o.ServiceAccount = name
	}
	if o.Labels == nil {
		o.Labels = map[string]string{"app": name}
	}
	if o.Identity == "" {
		o.Identity = fmt.Sprintf("%s:%d", node.NodeIP, IdentityPort)
	}
	args := append([]string{"run", "--identity-addr", o.Identity, "--bundle", "/run/mesh/bundle/" + trustbundle.Key,
		"--token-file", "/var/run/secrets/mesh/tokens/identity-token",
		"--audit-log", "/run/mesh/audit/audit.log", "--audit-checkpoint-interval", "1s"}, o.ProxyArgs...)
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, Labels: o.Labels},
		Spec: corev1.PodSpec{
			ServiceAccountName:            o.ServiceAccount,
			TerminationGracePeriodSeconds: ptrTo(int64(2)),
			InitContainers: []corev1.Container{
				{
					Name: "mesh-init", Image: "mesh/mesh-proxy:dev", Args: []string{"init", "--proxy-uid", "1337"},
					SecurityContext: &corev1.SecurityContext{RunAsUser: &root, Capabilities: &corev1.Capabilities{Add: []corev1.Capability{"NET_ADMIN", "NET_RAW"}, Drop: []corev1.Capability{"ALL"}}},
				},
				{
					Name: "mesh-proxy", Image: "mesh/mesh-proxy:dev", Args: args, RestartPolicy: &always,
					Env: []corev1.EnvVar{fieldEnv("POD_NAME", "metadata.name"), fieldEnv("POD_NAMESPACE", "metadata.namespace"), fieldEnv("POD_IP", "status.podIP"),
						// The echo container's readiness probe, which the
						// kubelet sends to the proxy's admin port (as the
						// injector will rewrite it): the proxy performs it.
						{Name: "MESH_APP_PROBES", Value: `{"/app-health/echo/readyz":{"httpGet":{"path":"/live","port":8080}}}`}},
					SecurityContext: &corev1.SecurityContext{RunAsUser: &proxyUID},
					VolumeMounts: []corev1.VolumeMount{
						{Name: "mesh-token", MountPath: "/var/run/secrets/mesh/tokens"},
						{Name: "mesh-bundle", MountPath: "/run/mesh/bundle"},
						{Name: "audit", MountPath: "/run/mesh/audit"},
					},
				},
			},
			Containers: []corev1.Container{{
				Name: "echo", Image: "mesh-e2e/echo:dev",
				Env:             []corev1.EnvVar{fieldEnv("POD_NAME", "metadata.name")},
				SecurityContext: &corev1.SecurityContext{RunAsUser: &appUID},
				Ports:           []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}, {Name: "tcp-echo", ContainerPort: 9000}, {Name: "grpc", ContainerPort: 9090}},
				// Strict mTLS lets no plaintext in, not even the kubelet's:
				// its probe goes to the proxy, which probes the app.
				ReadinessProbe: &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/app-health/echo/readyz", Port: intstr.FromInt32(15020)}}},
			}},
			Volumes: []corev1.Volume{
				{Name: "mesh-token", VolumeSource: corev1.VolumeSource{Projected: &corev1.ProjectedVolumeSource{Sources: []corev1.VolumeProjection{{ServiceAccountToken: &corev1.ServiceAccountTokenProjection{Audience: "identity.mesh.dev", ExpirationSeconds: &exp, Path: "identity-token"}}}}}},
				{Name: "mesh-bundle", VolumeSource: corev1.VolumeSource{ConfigMap: &corev1.ConfigMapVolumeSource{LocalObjectReference: corev1.LocalObjectReference{Name: trustbundle.ConfigMapName}}}},
				{Name: "audit", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}},
			},
		},
	}
}

// PlainPod is the echo app with no sidecar: outside the mesh.
func PlainPod(ns, name string) *corev1.Pod {
	appUID := int64(1000)
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, Labels: map[string]string{"app": name}},
		Spec: corev1.PodSpec{
			TerminationGracePeriodSeconds: ptrTo(int64(2)),
			Containers: []corev1.Container{{
				Name: "echo", Image: "mesh-e2e/echo:dev", SecurityContext: &corev1.SecurityContext{RunAsUser: &appUID},
				Env: []corev1.EnvVar{{Name: "POD_NAME", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.name"}}}},
			}},
		},
	}
}

// CreateRunning creates pod and returns its IP once its app container is
// ready (for a meshed pod: the proxy probed the app for the kubelet).
func CreateRunning(ctx context.Context, cs kubernetes.Interface, pod *corev1.Pod) (string, error) {
	if _, err := cs.CoreV1().Pods(pod.Namespace).Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		return "", err
	}
	var ip string
	err := WaitFor(ctx, 2*time.Minute, func() error {
		got, err := cs.CoreV1().Pods(pod.Namespace).Get(ctx, pod.Name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		if got.Status.PodIP == "" || len(got.Status.ContainerStatuses) == 0 || got.Status.ContainerStatuses[0].State.Running == nil ||
			(len(got.Spec.InitContainers) > 0 && !got.Status.ContainerStatuses[0].Ready) {
			return fmt.Errorf("pod %s/%s not running and ready: %+v", pod.Namespace, pod.Name, got.Status)
		}
		ip = got.Status.PodIP
		return nil
	})
	return ip, err
}

// InPod is a command run as the app's user (uid 1000) in pod ns/name's
// network namespace, so the pod's iptables send its connections through
// its proxy.
func InPod(ctx context.Context, ns, name string, args ...string) *exec.Cmd {
	return exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", node.NetnsName(ns, name), "setpriv", "--reuid", "1000", "--regid", "1000", "--clear-groups", "--"}, args...)...)
}

// Echo runs mesh-e2e-echo's client mode args in pod ns/name as the app.
func Echo(ctx context.Context, ns, name string, args ...string) (string, error) {
	out, err := InPod(ctx, ns, name, append([]string{filepath.Join(prereq.BinDir(), "mesh-e2e-echo")}, args...)...).CombinedOutput()
	return strings.TrimSpace(string(out)), err
}

// EnsureNamespace creates namespace ns, labelled for injection (so the
// controller publishes the trust bundle there before the first pod), and
// the ServiceAccounts, waiting for the namespace to be usable.
func EnsureNamespace(ctx context.Context, cs kubernetes.Interface, ns string, sas ...string) error {
	labels := map[string]string{trustbundle.InjectLabel: trustbundle.InjectEnabled}
	if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns, Labels: labels}}, metav1.CreateOptions{}); err != nil && !strings.Contains(err.Error(), "already exists") {
		return err
	}
	for _, sa := range sas {
		if err := WaitFor(ctx, time.Minute, func() error {
			_, err := cs.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: sa}}, metav1.CreateOptions{})
			if err != nil && strings.Contains(err.Error(), "already exists") {
				return nil
			}
			return err
		}); err != nil {
			return err
		}
	}
	return nil
}

// WaitFor calls f every 100ms until it succeeds or bound passes, and
// returns its last error.
func WaitFor(ctx context.Context, bound time.Duration, f func() error) error {
	deadline := time.Now().Add(bound)
	for {
		err := f()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func ptrTo[T any](v T) *T { return &v }

// SyncBuffer is a bytes.Buffer safe for one writer (a process's output)
// and readers in other goroutines.
type SyncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *SyncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *SyncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

var _ io.Writer = (*SyncBuffer)(nil)
