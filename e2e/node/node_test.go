package node

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	authnv1 "k8s.io/api/authentication/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"

	"github.com/mesh-dev/mesh/e2e/cluster"
	"github.com/mesh-dev/mesh/e2e/clustertest"
	"github.com/mesh-dev/mesh/e2e/prereq"
)

func TestMain(m *testing.M) { os.Exit(clustertest.Run(m)) }

func waitFor(t *testing.T, bound time.Duration, what string, f func() error) {
	t.Helper()
	deadline := time.Now().Add(bound)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s: %v", what, bound, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// startNode runs an agent whose requests to the API server are recorded
// in the returned log.
func startNode(t *testing.T, c *cluster.Cluster) (*Node, *apiLog) {
	t.Helper()
	api := &apiLog{}
	cfg := c.RESTConfig()
	cfg.Wrap(api.wrap)
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	n, err := New(Config{Kube: cs, Dir: t.TempDir(), CACertPath: c.CACertPath(), CAKeyPath: c.CAKeyPath(), TokenRefreshInterval: 2 * time.Second, Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- n.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("node agent: %v", err)
		}
		// Nothing of the pod network is left, unless another test
		// package's agent, waiting for the machine's pod network, took it
		// as soon as this one let go: then the bridge is that agent's.
		f, err := os.OpenFile(lockPath, os.O_CREATE|os.O_RDWR, 0o644)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		if syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB) != nil {
			t.Log("another node agent owns the pod network now: not checking that it is gone")
			return
		}
		defer syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
		if out, _ := exec.Command("ip", "netns", "list").Output(); strings.Contains(string(out), "pod-") {
			t.Errorf("network namespaces left after the agent stopped:\n%s", out)
		}
		if exec.Command("ip", "link", "show", Bridge).Run() == nil {
			t.Errorf("bridge %s left after the agent stopped", Bridge)
		}
	})
	waitFor(t, 2*time.Minute, "node Ready", func() error {
		node, err := cs.CoreV1().Nodes().Get(context.Background(), n.cfg.Name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		for _, c := range node.Status.Conditions {
			if c.Type == corev1.NodeReady && c.Status == corev1.ConditionTrue {
				return nil
			}
		}
		return fmt.Errorf("not ready")
	})
	return n, api
}

func echoContainer() corev1.Container {
	uid := int64(1000)
	return corev1.Container{
		Name: "echo", Image: "mesh-e2e/echo:latest",
		Env:             []corev1.EnvVar{{Name: "POD_NAME", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.name"}}}},
		Ports:           []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}},
		ReadinessProbe:  &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/healthz", Port: intstr.FromString("http")}}},
		SecurityContext: &corev1.SecurityContext{RunAsUser: &uid},
	}
}

// TestNodeAgent runs one agent on the real cluster for its subtests.
func TestNodeAgent(t *testing.T) {
	prereq.Root(t)
	echo := prereq.Bin(t, "mesh-e2e-echo")
	c := clustertest.Get(t)
	n, api := startNode(t, c)
	t.Run("deployment", func(t *testing.T) { testDeployment(t, n, echo) })
	t.Run("init-container-iptables", func(t *testing.T) { testInitIptables(t, n, echo) })
	t.Run("kubectl-logs", func(t *testing.T) { testLogs(t, c) })
	t.Run("volumes", func(t *testing.T) { testVolumes(t, n, c, api) })
	t.Run("env-liveness-previous-logs", func(t *testing.T) { testLifecycle(t, n, c, echo) })
	t.Run("job", func(t *testing.T) { testJob(t, n) })
	t.Run("job-native-sidecar", func(t *testing.T) { testJobSidecar(t, n) })
	t.Run("sidecar-readiness", func(t *testing.T) { testSidecarReadiness(t, n) })
	t.Run("sidecar-restart", func(t *testing.T) { testSidecarRestart(t, n) })
	t.Run("delete-main-before-sidecar", func(t *testing.T) { testDeleteOrder(t, n) })
	t.Run("watch-not-poll", func(t *testing.T) { testWatchNotPoll(t, n, api) })
	t.Run("same-name-while-terminating", func(t *testing.T) { testSameName(t, n, echo) })
}

// testDeployment: a Deployment of two echo replicas, scheduled by the real
// scheduler, becomes Ready on the agent; each pod has its own address in
// 198.18.0.0/16 and answers, from a third pod's network namespace, with its
// own name; deleting a pod ends its processes and removes its namespace and
// address.
func testDeployment(t *testing.T, n *Node, echo string) {
	cs, ctx := n.cfg.Kube, t.Context()

	if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "echo"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 30*time.Second, "default ServiceAccount", func() error {
		_, err := cs.CoreV1().ServiceAccounts("echo").Get(ctx, "default", metav1.GetOptions{})
		return err
	})
	replicas := int32(2)
	labels := map[string]string{"app": "echo"}
	_, err := cs.AppsV1().Deployments("echo").Create(ctx, &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: "echo"},
		Spec: appsv1.DeploymentSpec{
			Replicas: &replicas, Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec:       corev1.PodSpec{Containers: []corev1.Container{echoContainer()}, TerminationGracePeriodSeconds: ptrTo(int64(5))},
			},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, 90*time.Second, "Deployment available", func() error {
		d, err := cs.AppsV1().Deployments("echo").Get(ctx, "echo", metav1.GetOptions{})
		if err != nil {
			return err
		}
		if d.Status.AvailableReplicas != 2 {
			return fmt.Errorf("%d of 2 replicas available", d.Status.AvailableReplicas)
		}
		return nil
	})
	pods, err := cs.CoreV1().Pods("echo").List(ctx, metav1.ListOptions{LabelSelector: "app=echo"})
	if err != nil || len(pods.Items) != 2 {
		t.Fatalf("pods: %v, %v", pods, err)
	}
	podNet := netip.MustParsePrefix("198.18.0.0/16")
	ips := map[string]string{}
	for _, p := range pods.Items {
		ip, err := netip.ParseAddr(p.Status.PodIP)
		if err != nil || !podNet.Contains(ip) {
			t.Fatalf("pod %s has IP %q, want one in %s", p.Name, p.Status.PodIP, podNet)
		}
		if other, dup := ips[p.Status.PodIP]; dup {
			t.Fatalf("pods %s and %s share %s", p.Name, other, p.Status.PodIP)
		}
		ips[p.Status.PodIP] = p.Name
	}

	// A third pod, and requests from its network namespace.
	client, err := cs.CoreV1().Pods("echo").Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "client"},
		Spec:       corev1.PodSpec{Containers: []corev1.Container{echoContainer()}, TerminationGracePeriodSeconds: ptrTo(int64(5))},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, 60*time.Second, "client pod running", func() error {
		p, err := cs.CoreV1().Pods("echo").Get(ctx, client.Name, metav1.GetOptions{})
		if err != nil || p.Status.PodIP == "" {
			return fmt.Errorf("no IP yet: %v", err)
		}
		return nil
	})
	for ip, name := range ips {
		out, err := exec.Command("ip", "netns", "exec", NetnsName("echo", "client"), echo, "get", "http://"+ip+":8080/").CombinedOutput()
		if err != nil || !strings.Contains(string(out), "hello from "+name+" ") {
			t.Fatalf("GET %s from the client pod = %q, %v; want %s's name", ip, out, err, name)
		}
	}

	// Deleting a pod tears it down.
	victim := pods.Items[0]
	n.mu.Lock()
	rt := n.pods[victim.UID]
	n.mu.Unlock()
	if rt == nil {
		t.Fatalf("the agent does not run %s", victim.Name)
	}
	rt.mu.Lock()
	pid := rt.procs[0].Process.Pid
	rt.mu.Unlock()
	if err := cs.CoreV1().Pods("echo").Delete(ctx, victim.Name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 30*time.Second, "deleted pod gone", func() error {
		_, err := cs.CoreV1().Pods("echo").Get(ctx, victim.Name, metav1.GetOptions{})
		if err == nil {
			return fmt.Errorf("still there")
		}
		return nil
	})
	if alive(pid) {
		t.Fatalf("the deleted pod's process %d still runs", pid)
	}
	if exec.Command("ip", "netns", "exec", NetnsName("echo", victim.Name), "true").Run() == nil {
		t.Fatal("the deleted pod's network namespace is still there")
	}
	// The address is free (the ReplicaSet's replacement may take it).
	n.ipam.mu.Lock()
	owner := n.ipam.inUse[netip.MustParseAddr(victim.Status.PodIP)]
	n.ipam.mu.Unlock()
	if owner == string(victim.UID) {
		t.Fatalf("the deleted pod's IP %s is still allocated to it", victim.Status.PodIP)
	}
}

// TestDownAfterCrash: what a dead agent leaves (memory emptyDir mounts, pod
// namespaces, the bridge) is removed by Down, which `make cluster-down`
// runs.
func TestDownAfterCrash(t *testing.T) {
	prereq.Root(t)
	unlock, err := lockNetwork()
	if err != nil {
		t.Fatal(err)
	}
	err = setupBridge()
	if err == nil {
		err = addPodNetwork(NetnsName("crash", "p"), "vhcrashtest", netip.MustParseAddr("198.18.127.250"))
	}
	mnt := t.TempDir()
	if err == nil {
		if err = recordMount(mnt); err == nil {
			err = exec.Command("mount", "-t", "tmpfs", "tmpfs", mnt).Run()
		}
	}
	unlock() // the "crash": Down takes the lock itself
	if err != nil {
		t.Fatal(err)
	}
	if err := Down(); err != nil {
		t.Fatal(err)
	}
	if out, _ := exec.Command("ip", "netns", "list").Output(); strings.Contains(string(out), "pod-crash-p") {
		t.Fatalf("namespace left:\n%s", out)
	}
	// The bridge is gone, unless another test package's agent, waiting
	// for the machine's pod network, took it as soon as Down let go.
	if f, err := os.OpenFile(lockPath, os.O_CREATE|os.O_RDWR, 0o644); err != nil {
		t.Fatal(err)
	} else if syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB) != nil {
		t.Log("another node agent owns the pod network now: not checking that the bridge is gone")
		f.Close()
	} else {
		bridgeLeft := exec.Command("ip", "link", "show", Bridge).Run() == nil
		_ = syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
		f.Close()
		if bridgeLeft {
			t.Fatal("bridge left")
		}
	}
	if mounts, _ := os.ReadFile("/proc/self/mountinfo"); strings.Contains(string(mounts), " "+mnt+" ") {
		t.Fatal("memory emptyDir mount left")
	}
}

func createPod(t *testing.T, cs kubernetes.Interface, ns string, p *corev1.Pod) {
	t.Helper()
	p.Spec.TerminationGracePeriodSeconds = ptrTo(int64(5))
	if _, err := cs.CoreV1().Pods(ns).Create(t.Context(), p, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 60*time.Second, "pod "+p.Name+" ready", func() error {
		got, err := cs.CoreV1().Pods(ns).Get(t.Context(), p.Name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		for _, c := range got.Status.Conditions {
			if c.Type == corev1.PodReady && c.Status == corev1.ConditionTrue {
				return nil
			}
		}
		return fmt.Errorf("not ready: %+v", got.Status)
	})
}

func podIP(t *testing.T, cs kubernetes.Interface, ns, name string) string {
	t.Helper()
	p, err := cs.CoreV1().Pods(ns).Get(t.Context(), name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return p.Status.PodIP
}

// testInitIptables: an init container running iptables as root with
// NET_ADMIN changes its own pod's rules only: the pod refuses port 8080,
// its neighbour does not, and the host's rules are untouched.
func testInitIptables(t *testing.T, n *Node, echo string) {
	cs := n.cfg.Kube
	hostBefore, err := exec.Command("iptables-save", "-t", "filter").Output()
	if err != nil {
		t.Fatal(err)
	}
	walled := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "walled"},
		Spec: corev1.PodSpec{
			InitContainers: []corev1.Container{{
				Name: "wall", Image: ToolsImage,
				Command:         []string{"iptables", "-A", "INPUT", "-p", "tcp", "--dport", "8080", "-j", "REJECT"},
				SecurityContext: &corev1.SecurityContext{Capabilities: &corev1.Capabilities{Add: []corev1.Capability{"NET_ADMIN", "NET_RAW"}}},
			}},
			Containers: []corev1.Container{func() corev1.Container { c := echoContainer(); c.ReadinessProbe = nil; return c }()},
		},
	}
	createPod(t, cs, "echo", walled)
	open := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "open"}, Spec: corev1.PodSpec{Containers: []corev1.Container{echoContainer()}}}
	createPod(t, cs, "echo", open)

	get := func(ip string) (string, error) {
		out, err := exec.Command("ip", "netns", "exec", NetnsName("echo", "client"), echo, "get", "http://"+ip+":8080/").CombinedOutput()
		return string(out), err
	}
	if out, err := get(podIP(t, cs, "echo", "walled")); err == nil {
		t.Fatalf("the walled pod answered: %q", out)
	}
	if out, err := get(podIP(t, cs, "echo", "open")); err != nil || !strings.Contains(out, "hello from open ") {
		t.Fatalf("the open pod: %q, %v", out, err)
	}
	rules, err := exec.Command("ip", "netns", "exec", NetnsName("echo", "walled"), "iptables", "-S", "INPUT").Output()
	if err != nil || !strings.Contains(string(rules), "--dport 8080 -j REJECT") {
		t.Fatalf("the walled pod's rules: %s %v", rules, err)
	}
	hostAfter, _ := exec.Command("iptables-save", "-t", "filter").Output()
	if stripComments(string(hostBefore)) != stripComments(string(hostAfter)) {
		t.Fatalf("the host's rules changed:\n%s\n---\n%s", hostBefore, hostAfter)
	}
}

func stripComments(s string) string {
	var keep []string
	for _, l := range strings.Split(s, "\n") {
		if !strings.HasPrefix(l, "#") {
			keep = append(keep, l)
		}
	}
	return strings.Join(keep, "\n")
}

// testLogs: `kubectl logs` reaches the agent through the API server.
func testLogs(t *testing.T, c *cluster.Cluster) {
	kubectl := func(args ...string) (string, error) {
		ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
		defer cancel()
		cmd := exec.CommandContext(ctx, prereq.Tool(t, "kubectl"), args...)
		cmd.Env = append(os.Environ(), "KUBECONFIG="+c.KubeconfigPath())
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	want := "mesh-e2e-echo client serving HTTP on :8080, TCP on :9000, gRPC on :9090"
	if out, err := kubectl("-n", "echo", "logs", "client"); err != nil || !strings.Contains(out, want) {
		t.Fatalf("kubectl logs = %q, %v", out, err)
	}
	if out, err := kubectl("-n", "echo", "logs", "client", "-c", "echo", "--tail=1"); err != nil || strings.TrimSpace(out) != want {
		t.Fatalf("kubectl logs -c echo --tail=1 = %q, %v", out, err)
	}
	if out, err := kubectl("-n", "echo", "logs", "client", "-c", "nope"); err == nil {
		t.Fatalf("logs of a container that does not exist: %q", out)
	}
	// -f streams until stopped: the timeout ends it, after the output.
	out, _ := kubectl("-n", "echo", "logs", "-f", "--request-timeout=3s", "client")
	if !strings.Contains(out, want) {
		t.Fatalf("kubectl logs -f = %q", out)
	}
}

// testVolumes: a projected service-account token and a configMap are
// mounted at their paths inside the pod's own mount namespace; the token
// reviews as the pod's and is renewed; a new version of the configMap
// reaches the pod within 10 seconds of kubectl apply; nothing is mounted
// on the node.
func testVolumes(t *testing.T, n *Node, c *cluster.Cluster, api *apiLog) {
	cs, ctx := n.cfg.Kube, t.Context()
	kubectl := func(stdin string, args ...string) {
		t.Helper()
		cmd := exec.Command(prereq.Tool(t, "kubectl"), args...)
		cmd.Env = append(os.Environ(), "KUBECONFIG="+c.KubeconfigPath())
		cmd.Stdin = strings.NewReader(stdin)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("kubectl %v: %v\n%s", args, err, out)
		}
	}
	cm := func(v string) string {
		return "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: app-config, namespace: echo}\ndata: {greeting: " + v + "}\n"
	}
	kubectl(cm("hello-v1"), "apply", "-f", "-")
	exp := int64(600)
	coverPath := filepath.Join(os.TempDir(), "mesh-e2e-cover", "scratch")
	if !strings.HasPrefix(n.cfg.Dir, os.TempDir()+"/") {
		t.Fatalf("the agent's folder %s is not under %s", n.cfg.Dir, os.TempDir())
	}
	ctr := echoContainer()
	ctr.VolumeMounts = []corev1.VolumeMount{
		{Name: "tokens", MountPath: "/var/run/secrets/mesh-e2e/tokens"},
		{Name: "config", MountPath: "/run/mesh-e2e/config"},
		{Name: "scratch", MountPath: "/run/mesh-e2e/scratch"},
		// Under /etc, which the pod still sees whole.
		{Name: "config", MountPath: "/etc/mesh-e2e/config"},
		// Under the folder that holds the agent's: the emptyDir bound is
		// still the node's.
		{Name: "scratch", MountPath: coverPath},
	}
	createPod(t, cs, "echo", &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "vols"},
		Spec: corev1.PodSpec{
			Containers: []corev1.Container{ctr},
			Volumes: []corev1.Volume{
				{Name: "tokens", VolumeSource: corev1.VolumeSource{Projected: &corev1.ProjectedVolumeSource{Sources: []corev1.VolumeProjection{
					{ServiceAccountToken: &corev1.ServiceAccountTokenProjection{Audience: "vault", ExpirationSeconds: &exp, Path: "token"}},
					{DownwardAPI: &corev1.DownwardAPIProjection{Items: []corev1.DownwardAPIVolumeFile{{Path: "podname", FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.name"}}}}},
				}}}},
				{Name: "config", VolumeSource: corev1.VolumeSource{ConfigMap: &corev1.ConfigMapVolumeSource{LocalObjectReference: corev1.LocalObjectReference{Name: "app-config"}}}},
				{Name: "scratch", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{Medium: corev1.StorageMediumMemory}}},
			},
		},
	})
	n.mu.Lock()
	var pid int
	var vols *corev1.Pod
	for _, rt := range n.pods {
		if rt.obj.Name == "vols" && !rt.finished() {
			rt.mu.Lock()
			pid, vols = rt.procs[0].Process.Pid, rt.obj
			rt.mu.Unlock()
		}
	}
	n.mu.Unlock()
	// Read a file as the container sees it: in its mount namespace.
	read := func(path string) string {
		t.Helper()
		out, err := exec.Command("nsenter", "-t", fmt.Sprint(pid), "-m", "cat", path).CombinedOutput()
		if err != nil {
			t.Fatalf("cat %s in the pod: %v: %s", path, err, out)
		}
		return string(out)
	}
	for _, p := range []string{"/var/run/secrets/mesh-e2e", "/etc/mesh-e2e", filepath.Dir(coverPath)} {
		if _, err := os.Stat(p); err == nil {
			t.Fatalf("the mountPath %s was created on the node", p)
		}
	}
	if want, _ := os.ReadFile("/etc/passwd"); read("/etc/passwd") != string(want) {
		t.Fatal("the pod's /etc/passwd is not the node's: /etc was hidden by the mount under it")
	}
	if got := read("/etc/mesh-e2e/config/greeting"); got != "hello-v1" {
		t.Fatalf("configMap greeting under /etc = %q", got)
	}
	if out, err := exec.Command("nsenter", "-t", fmt.Sprint(pid), "-m", "sh", "-c", "echo shared > "+coverPath+"/f").CombinedOutput(); err != nil {
		t.Fatalf("write to the emptyDir at %s: %v: %s", coverPath, err, out)
	}
	if b, err := os.ReadFile(filepath.Join(n.volumeDir(vols, "scratch"), "f")); err != nil || string(b) != "shared\n" {
		t.Fatalf("the emptyDir at %s is not the pod's emptyDir: %q, %v", coverPath, b, err)
	}
	if got := read("/var/run/secrets/mesh-e2e/tokens/podname"); got != "vols" {
		t.Fatalf("downward API podname = %q", got)
	}
	tok := read("/var/run/secrets/mesh-e2e/tokens/token")
	r, err := cs.AuthenticationV1().TokenReviews().Create(ctx, &authnv1.TokenReview{Spec: authnv1.TokenReviewSpec{Token: tok, Audiences: []string{"vault"}}}, metav1.CreateOptions{})
	if err != nil || !r.Status.Authenticated || r.Status.User.Username != "system:serviceaccount:echo:default" || r.Status.User.Extra["authentication.kubernetes.io/pod-name"][0] != "vols" {
		t.Fatalf("the projected token does not review as the pod's: %+v, %v", r.Status, err)
	}
	waitFor(t, 15*time.Second, "token renewed", func() error {
		if read("/var/run/secrets/mesh-e2e/tokens/token") == tok {
			return fmt.Errorf("same token")
		}
		return nil
	})
	if got := read("/run/mesh-e2e/config/greeting"); got != "hello-v1" {
		t.Fatalf("configMap greeting = %q", got)
	}
	mark := api.mark()
	kubectl(cm("hello-v2"), "apply", "-f", "-")
	start := time.Now()
	waitFor(t, 5*time.Second, "configMap update in the pod", func() error {
		if got := read("/run/mesh-e2e/config/greeting"); got != "hello-v2" {
			return fmt.Errorf("still %q", got)
		}
		return nil
	})
	t.Logf("configMap update reached the pod in %s", time.Since(start).Round(100*time.Millisecond))
	if got := read("/etc/mesh-e2e/config/greeting"); got != "hello-v2" {
		t.Fatalf("configMap greeting under /etc = %q after the update", got)
	}
	// It came on the watch: the agent did not read the configMap.
	if reads := api.since(mark, func(r apiRequest) bool { return !r.watch && strings.Contains(r.path, "/configmaps") }); len(reads) > 0 {
		t.Fatalf("the agent read configMaps instead of watching them: %v", reads)
	}
	if watches := api.since(0, func(r apiRequest) bool {
		return r.watch && r.path == "/api/v1/namespaces/echo/configmaps" && strings.Contains(r.query, "metadata.name%3Dapp-config")
	}); len(watches) == 0 {
		t.Fatalf("the agent has no watch on configMap app-config")
	}
	if out, err := exec.Command("nsenter", "-t", fmt.Sprint(pid), "-m", "sh", "-c", "echo x > /run/mesh-e2e/config/evil").CombinedOutput(); err == nil {
		t.Fatalf("the configMap volume is writable: %s", out)
	}

	// Deleting the pod leaves no mount on the node.
	if err := cs.CoreV1().Pods("echo").Delete(ctx, "vols", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 30*time.Second, "pod gone", func() error {
		if _, err := cs.CoreV1().Pods("echo").Get(ctx, "vols", metav1.GetOptions{}); err == nil {
			return fmt.Errorf("still there")
		}
		return nil
	})
	mounts, _ := os.ReadFile("/proc/self/mountinfo")
	if strings.Contains(string(mounts), n.cfg.Dir) {
		t.Fatalf("mounts left on the node:\n%s", mounts)
	}
	// Nor a watch on its configMap (kube-root-ca.crt's stays: every pod
	// mounts it, in its service-account token volume).
	waitFor(t, 5*time.Second, "configMap watch stopped", func() error {
		n.watches.mu.Lock()
		defer n.watches.mu.Unlock()
		if ow := n.watches.m[objectKey{"configmaps", "echo", "app-config"}]; ow != nil {
			return fmt.Errorf("app-config still watched for %v", ow.pods)
		}
		return nil
	})
}

// testLifecycle: env from secrets, configMaps and fields; a failing
// liveness probe restarts the container (restartCount counts it, and
// kubectl logs --previous shows the run before); the echo app's TCP and
// gRPC ports answer from another pod.
func testLifecycle(t *testing.T, n *Node, c *cluster.Cluster, echo string) {
	cs, ctx := n.cfg.Kube, t.Context()
	if _, err := cs.CoreV1().Secrets("echo").Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "creds"}, StringData: map[string]string{"password": "s3cret"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	ctr := echoContainer()
	ctr.Env = append(ctr.Env,
		corev1.EnvVar{Name: "PASSWORD", ValueFrom: &corev1.EnvVarSource{SecretKeyRef: &corev1.SecretKeySelector{LocalObjectReference: corev1.LocalObjectReference{Name: "creds"}, Key: "password"}}},
		corev1.EnvVar{Name: "GREETING", ValueFrom: &corev1.EnvVarSource{ConfigMapKeyRef: &corev1.ConfigMapKeySelector{LocalObjectReference: corev1.LocalObjectReference{Name: "app-config"}, Key: "greeting"}}},
		corev1.EnvVar{Name: "MY_IP", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "status.podIP"}}},
		corev1.EnvVar{Name: "ECHO_UNHEALTHY_AFTER", Value: "8s"},
	)
	ctr.LivenessProbe = &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/live", Port: intstr.FromInt32(8080)}}, PeriodSeconds: 1, FailureThreshold: 2}
	createPod(t, cs, "echo", &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "flaky"}, Spec: corev1.PodSpec{Containers: []corev1.Container{ctr}}})
	ip := podIP(t, cs, "echo", "flaky")

	// The liveness probe restarts the container: read the environment of
	// whichever process is current, retrying if it is replaced meanwhile.
	var environ []byte
	waitFor(t, 20*time.Second, "container environment", func() error {
		n.mu.Lock()
		defer n.mu.Unlock()
		for _, rt := range n.pods {
			if rt.obj.Name == "flaky" {
				rt.mu.Lock()
				pid := rt.procs[len(rt.procs)-1].Process.Pid
				rt.mu.Unlock()
				var err error
				environ, err = os.ReadFile(fmt.Sprintf("/proc/%d/environ", pid))
				return err
			}
		}
		return fmt.Errorf("pod flaky not running")
	})
	for _, want := range []string{"PASSWORD=s3cret", "GREETING=hello-v2", "MY_IP=" + ip, "POD_NAME=flaky"} {
		if !strings.Contains(string(environ), want+"\x00") {
			t.Errorf("container env lacks %s", want)
		}
	}

	// The container is killed 10 s after it starts and comes back after a
	// back-off; on a slow run the first try can fall in between.
	for _, args := range [][]string{{"tcp", ip + ":9000", "ping"}, {"grpc", ip + ":9090", "ping"}} {
		waitFor(t, 30*time.Second, "echo "+args[0]+" from the client pod", func() error {
			out, err := exec.Command("ip", append([]string{"netns", "exec", NetnsName("echo", "client"), echo}, args...)...).CombinedOutput()
			if err != nil || string(out) != "ping" {
				return fmt.Errorf("%q, %v", out, err)
			}
			return nil
		})
	}

	waitFor(t, time.Minute, "liveness restart", func() error {
		p, err := cs.CoreV1().Pods("echo").Get(ctx, "flaky", metav1.GetOptions{})
		if err != nil {
			return err
		}
		if len(p.Status.ContainerStatuses) == 0 || p.Status.ContainerStatuses[0].RestartCount < 1 {
			return fmt.Errorf("no restart yet")
		}
		return nil
	})
	cmd := exec.Command(prereq.Tool(t, "kubectl"), "-n", "echo", "logs", "flaky", "--previous")
	cmd.Env = append(os.Environ(), "KUBECONFIG="+c.KubeconfigPath())
	if out, err := cmd.CombinedOutput(); err != nil || !strings.Contains(string(out), "mesh-e2e-echo flaky serving") {
		t.Fatalf("kubectl logs --previous = %q, %v", out, err)
	}
}

// testJob: a Job's pod runs to completion and the Job succeeds.
func testJob(t *testing.T, n *Node) {
	cs, ctx := n.cfg.Kube, t.Context()
	_, err := cs.BatchV1().Jobs("echo").Create(ctx, &batchv1.Job{
		ObjectMeta: metav1.ObjectMeta{Name: "once"},
		Spec: batchv1.JobSpec{Template: corev1.PodTemplateSpec{Spec: corev1.PodSpec{
			RestartPolicy: corev1.RestartPolicyNever,
			// The pod's user is the container's.
			SecurityContext: &corev1.PodSecurityContext{RunAsUser: ptrTo(int64(1000))},
			Containers: []corev1.Container{{Name: "work", Image: ToolsImage,
				Env: []corev1.EnvVar{
					{Name: "POD_NAME", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.name"}}},
					{Name: "GREETING", Value: "hi from $(POD_NAME)"},
				},
				// $(VAR) is expanded by the agent, as by the kubelet; $$
				// and unknown names are left to the shell.
				Command: []string{"sh", "-c", "echo working: $(GREETING), uid $(id -u), $$(echo escaped); exit 0"}}},
		}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, time.Minute, "Job succeeded", func() error {
		j, err := cs.BatchV1().Jobs("echo").Get(ctx, "once", metav1.GetOptions{})
		if err != nil {
			return err
		}
		if j.Status.Succeeded != 1 {
			return fmt.Errorf("succeeded=%d failed=%d", j.Status.Succeeded, j.Status.Failed)
		}
		return nil
	})
	pods, err := cs.CoreV1().Pods("echo").List(ctx, metav1.ListOptions{LabelSelector: "job-name=once"})
	if err != nil || len(pods.Items) != 1 {
		t.Fatalf("the Job's pods: %v, %v", pods, err)
	}
	name := pods.Items[0].Name
	want := "working: hi from " + name + ", uid 1000, escaped\n"
	if b, err := os.ReadFile(n.logPath("echo", name, "work", false)); err != nil || string(b) != want {
		t.Fatalf("the job's log = %q, %v; want %q", b, err, want)
	}
}
