package node

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/net/dns/dnsmessage"
	"golang.org/x/sys/unix"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"

	"github.com/mesh-dev/mesh/e2e/cluster"
	"github.com/mesh-dev/mesh/e2e/clustertest"
	"github.com/mesh-dev/mesh/e2e/prereq"
)

// startServiceNode runs an agent with kube-proxy and the API server
// forwarder, as meshtest.StartNode does, and checks on stop that nothing
// of them is left on the machine.
func startServiceNode(t *testing.T, c *cluster.Cluster) *Node {
	t.Helper()
	dir := t.TempDir()
	kc := filepath.Join(dir, "kube-proxy.kubeconfig")
	if err := c.WriteKubeconfig(kc, "system:kube-proxy", nil); err != nil {
		t.Fatal(err)
	}
	n, err := New(Config{Kube: c.Client(), Dir: dir, CACertPath: c.CACertPath(), CAKeyPath: c.CAKeyPath(),
		KubeProxyKubeconfig: kc, APIServerPort: c.APIServerPort(),
		Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))})
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
		if t.Failed() {
			t.Logf("kube-proxy's log:\n%s", tailFile(filepath.Join(dir, "logs", "kube-proxy.log"), 40))
		}
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
		for _, table := range append([]string{guardTable}, kubeProxyTables...) {
			family, name, _ := strings.Cut(table, " ")
			if exec.Command("nft", "list", "table", family, name).Run() == nil {
				t.Errorf("nftables table %s left after the agent stopped", table)
			}
		}
		for _, save := range []string{"iptables-save", "ip6tables-save"} {
			if out, _ := exec.Command(save).Output(); strings.Contains(string(out), "KUBE-") {
				t.Errorf("kube-proxy's chains left after the agent stopped (%s):\n%s", save, out)
			}
		}
		if ents, _ := os.ReadDir(netnsEtc); len(ents) > 0 {
			for _, e := range ents {
				if strings.HasPrefix(e.Name(), "pod-") {
					t.Errorf("%s/%s left after the agent stopped", netnsEtc, e.Name())
				}
			}
		}
		if out, _ := exec.Command("ss", "-Hltn", "src", NodeIP).Output(); len(strings.TrimSpace(string(out))) > 0 {
			t.Errorf("listeners on %s left after the agent stopped:\n%s", NodeIP, out)
		}
		if out, _ := exec.Command("pgrep", "-f", filepath.Join(n.cfg.ToolsDir, "kube-proxy")).Output(); len(out) > 0 {
			t.Errorf("kube-proxy still runs after the agent stopped: pids %s", out)
		}
		if v := sysctl(t, "net/ipv4/ip_forward"); v != "0" {
			t.Errorf("net.ipv4.ip_forward = %s after the agent stopped, want 0", v)
		}
	})
	waitFor(t, 15*time.Minute, "node Ready with kube-proxy", func() error {
		select {
		case err := <-done:
			done <- err
			t.Fatalf("node agent ended: %v", err)
		default:
		}
		node, err := c.Client().CoreV1().Nodes().Get(context.Background(), n.cfg.Name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		select {
		case <-n.ServicesReady():
		default:
			return fmt.Errorf("Services not working yet")
		}
		for _, c := range node.Status.Conditions {
			if c.Type == corev1.NodeReady && c.Status == corev1.ConditionTrue {
				return nil
			}
		}
		return fmt.Errorf("not ready")
	})
	return n
}

func sysctl(t *testing.T, name string) string {
	t.Helper()
	b, err := os.ReadFile("/proc/sys/" + name)
	if err != nil {
		t.Fatalf("sysctl %s: %v", name, err)
	}
	return strings.TrimSpace(string(b))
}

// TestServicesAndDNS runs an agent with kube-proxy and the cluster's
// CoreDNS add-on: unmeshed pods resolve Services by name and reach them by
// ClusterIP, a pod reaches the API server with in-cluster config, a
// NodePort answers on the node's bridge address only, and forwarding is on
// for the bridge alone.
func TestServicesAndDNS(t *testing.T) {
	prereq.Root(t)
	echo := prereq.Bin(t, "mesh-e2e-echo")
	prereq.Tool(t, "kube-proxy")
	prereq.Tool(t, "coredns")
	kubectl := prereq.Tool(t, "kubectl")
	prereq.Command(t, "nft")
	c := clustertest.Get(t)
	// The machine's settings kube-proxy would change if let: conntrack's
	// size and timeouts, and route_localnet for localhost NodePorts.
	untouched := []string{
		"net/netfilter/nf_conntrack_max", "net/netfilter/nf_conntrack_tcp_timeout_established",
		"net/netfilter/nf_conntrack_tcp_timeout_close_wait", "net/netfilter/nf_conntrack_udp_timeout",
		"net/netfilter/nf_conntrack_udp_timeout_stream", "net/netfilter/nf_conntrack_tcp_be_liberal",
		"net/ipv4/conf/all/route_localnet", "net/ipv4/ip_forward",
	}
	before := map[string]string{}
	for _, name := range untouched {
		// Those of a conntrack module not loaded yet are the kernel's
		// defaults when it loads: nothing to compare.
		if b, err := os.ReadFile("/proc/sys/" + name); err == nil {
			before[name] = strings.TrimSpace(string(b))
		}
	}
	n := startServiceNode(t, c)
	cs := c.Client()

	waitCoreDNS(t, cs)
	const ns = "svc"
	names := deployEcho(t, cs, ns, 3)
	createPod(t, cs, ns, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "client"}, Spec: corev1.PodSpec{Containers: []corev1.Container{echoContainer()}}})
	svc, err := cs.CoreV1().Services(ns).Get(t.Context(), "echo", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}

	t.Run("forwarding", func(t *testing.T) {
		for name, want := range map[string]string{
			"net/ipv4/ip_forward": "0", "net/ipv4/conf/all/forwarding": "0",
			"net/ipv4/conf/" + Bridge + "/forwarding": "1",
		} {
			if got := sysctl(t, name); got != want {
				t.Errorf("%s = %s, want %s", name, got, want)
			}
		}
		for name := range before {
			if got := sysctl(t, name); got != before[name] {
				t.Errorf("%s = %s with kube-proxy running, was %s", name, got, before[name])
			}
		}
	})
	t.Run("dns", func(t *testing.T) { testDNS(t, ns, svc.Spec.ClusterIP) })
	t.Run("clusterip", func(t *testing.T) { testClusterIP(t, ns, echo, names) })
	t.Run("in-cluster-config", func(t *testing.T) { testInClusterConfig(t, n, cs, ns, kubectl) })
	t.Run("nodeport", func(t *testing.T) { testNodePort(t, cs, ns, names) })
	t.Run("forward-guard", func(t *testing.T) { testForwardGuard(t, ns) })
}

// deployEcho runs replicas of the echo server behind a Service echo
// (port 80) and returns the pods' names.
func deployEcho(t *testing.T, cs kubernetes.Interface, ns string, replicas int32) map[string]bool {
	t.Helper()
	ctx := t.Context()
	if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 30*time.Second, "default ServiceAccount", func() error {
		_, err := cs.CoreV1().ServiceAccounts(ns).Get(ctx, "default", metav1.GetOptions{})
		return err
	})
	labels := map[string]string{"app": "echo"}
	if _, err := cs.CoreV1().Services(ns).Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "echo"},
		Spec: corev1.ServiceSpec{Selector: labels, Ports: []corev1.ServicePort{
			{Name: "http", Port: 80, TargetPort: intstr.FromInt32(8080)},
		}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := cs.AppsV1().Deployments(ns).Create(ctx, &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: "echo"},
		Spec: appsv1.DeploymentSpec{
			Replicas: &replicas, Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec:       corev1.PodSpec{Containers: []corev1.Container{echoContainer()}, TerminationGracePeriodSeconds: ptrTo(int64(5))},
			},
		},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 90*time.Second, "echo Deployment available", func() error {
		d, err := cs.AppsV1().Deployments(ns).Get(ctx, "echo", metav1.GetOptions{})
		if err != nil {
			return err
		}
		if d.Status.AvailableReplicas != replicas {
			return fmt.Errorf("%d of %d available", d.Status.AvailableReplicas, replicas)
		}
		return nil
	})
	pods, err := cs.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: "app=echo"})
	if err != nil {
		t.Fatal(err)
	}
	names := map[string]bool{}
	for _, p := range pods.Items {
		names[p.Name] = true
	}
	return names
}

// testDNS: through the client pod's resolv.conf, the Service's full name
// and its short name (by the search list) resolve to its ClusterIP; asked
// directly, CoreDNS answers cluster.local and refuses every other name
// (it has nothing to forward to); the pod's resolv.conf is the cluster's.
func testDNS(t *testing.T, ns, clusterIP string) {
	netns := NetnsName(ns, "client")
	b, err := os.ReadFile(filepath.Join(netnsEtc, netns, "resolv.conf"))
	if err != nil {
		t.Fatal(err)
	}
	want := "nameserver " + ClusterDNS + "\nsearch " + ns + ".svc.cluster.local svc.cluster.local cluster.local\noptions ndots:5\n"
	if string(b) != want {
		t.Fatalf("client's resolv.conf =\n%s\nwant\n%s", b, want)
	}
	for _, name := range []string{"echo." + ns + ".svc.cluster.local", "echo." + ns, "echo"} {
		var out []byte
		waitFor(t, 30*time.Second, "getent hosts "+name, func() error {
			out, err = exec.Command("ip", "netns", "exec", netns, "getent", "ahostsv4", name).CombinedOutput()
			return err
		})
		if f := strings.Fields(string(out)); len(f) == 0 || f[0] != clusterIP {
			t.Errorf("getent ahostsv4 %s in the client pod = %q, want %s", name, out, clusterIP)
		}
	}
	if out, err := exec.Command("ip", "netns", "exec", netns, "getent", "ahostsv4", "nosuch."+ns+".svc.cluster.local").CombinedOutput(); err == nil {
		t.Errorf("a Service that does not exist resolves: %s", out)
	}

	// Straight to the kube-dns ClusterIP, through kube-proxy, over UDP
	// and TCP.
	for _, tc := range []struct {
		network string
		name    string
		rcode   dnsmessage.RCode
		want    string
	}{
		{"udp", "echo." + ns + ".svc.cluster.local.", dnsmessage.RCodeSuccess, clusterIP},
		{"tcp", "echo." + ns + ".svc.cluster.local.", dnsmessage.RCodeSuccess, clusterIP},
		{"udp", "kubernetes.default.svc.cluster.local.", dnsmessage.RCodeSuccess, "198.18.192.1"},
		{"udp", "nosuch." + ns + ".svc.cluster.local.", dnsmessage.RCodeNameError, ""},
		{"udp", "example.com.", dnsmessage.RCodeRefused, ""},
		{"tcp", "example.com.", dnsmessage.RCodeRefused, ""},
		{"udp", "echo." + ns + ".svc.cluster.local.example.com.", dnsmessage.RCodeRefused, ""},
		{"udp", "1.0.0.127.in-addr.arpa.", dnsmessage.RCodeRefused, ""},
	} {
		rcode, addrs, err := queryA(tc.network, net.JoinHostPort(ClusterDNS, "53"), tc.name)
		if err != nil {
			t.Errorf("query %s over %s: %v", tc.name, tc.network, err)
			continue
		}
		if rcode != tc.rcode || (tc.want != "" && (len(addrs) != 1 || addrs[0] != tc.want)) || (tc.want == "" && len(addrs) > 0) {
			t.Errorf("A %s over %s = %v %v, want %v %q", tc.name, tc.network, rcode, addrs, tc.rcode, tc.want)
		}
	}

	// CoreDNS (dnsPolicy Default) keeps the node's resolver, not itself.
	ents, err := os.ReadDir(netnsEtc)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), NetnsName(metav1.NamespaceSystem, "coredns")) {
			t.Errorf("CoreDNS's pod has a resolv.conf of its own: %s/%s", netnsEtc, e.Name())
		}
	}
}

// queryA sends one A query over UDP or TCP and returns the answer's code
// and addresses.
func queryA(network, server, name string) (dnsmessage.RCode, []string, error) {
	q := dnsmessage.Message{
		Header:    dnsmessage.Header{ID: 4242, RecursionDesired: true},
		Questions: []dnsmessage.Question{{Name: dnsmessage.MustNewName(name), Type: dnsmessage.TypeA, Class: dnsmessage.ClassINET}},
	}
	pkt, err := q.Pack()
	if err != nil {
		return 0, nil, err
	}
	var last error
	for range 5 { // a few tries: the first may race a rule sync
		conn, err := net.DialTimeout(network, server, 2*time.Second)
		if err != nil {
			last = err
			continue
		}
		buf, err := exchange(conn, pkt)
		conn.Close()
		if err != nil {
			last = err
			continue
		}
		var m dnsmessage.Message
		if err := m.Unpack(buf); err != nil {
			return 0, nil, err
		}
		if m.ID != q.ID {
			return 0, nil, fmt.Errorf("answer for id %d, asked %d", m.ID, q.ID)
		}
		var addrs []string
		for _, a := range m.Answers {
			if r, ok := a.Body.(*dnsmessage.AResource); ok {
				addrs = append(addrs, net.IP(r.A[:]).String())
			}
		}
		return m.RCode, addrs, nil
	}
	return 0, nil, fmt.Errorf("no answer from %s: %w", server, last)
}

// exchange sends a DNS message and reads the answer: as is over UDP, with
// the two-byte length prefix over TCP (RFC 1035 4.2.2).
func exchange(conn net.Conn, pkt []byte) ([]byte, error) {
	_ = conn.SetDeadline(time.Now().Add(2 * time.Second))
	_, stream := conn.(*net.TCPConn)
	if stream {
		pkt = append([]byte{byte(len(pkt) >> 8), byte(len(pkt))}, pkt...)
	}
	if _, err := conn.Write(pkt); err != nil {
		return nil, err
	}
	if !stream {
		buf := make([]byte, 1500)
		n, err := conn.Read(buf)
		return buf[:n], err
	}
	var size [2]byte
	if _, err := io.ReadFull(conn, size[:]); err != nil {
		return nil, err
	}
	buf := make([]byte, int(size[0])<<8|int(size[1]))
	_, err := io.ReadFull(conn, buf)
	return buf, err
}

// testClusterIP: requests from an unmeshed pod to the Service's short name
// reach its endpoints through kube-proxy, spread over more than one. The
// endpoints are ready when it starts, but kube-proxy may program them a
// sync later: the requests go on (at most 300, for at most 30 s) until two
// endpoints have answered.
func testClusterIP(t *testing.T, ns, echo string, names map[string]bool) {
	seen := map[string]int{}
	deadline := time.Now().Add(30 * time.Second)
	for i := 0; i < 300 && len(seen) < 2 && time.Now().Before(deadline); i++ {
		out, err := exec.Command("ip", "netns", "exec", NetnsName(ns, "client"), echo, "get", "http://echo/").CombinedOutput()
		if err != nil {
			t.Fatalf("GET http://echo/ from the client pod: %v: %s", err, out)
		}
		name := strings.Fields(strings.TrimPrefix(string(out), "hello from "))
		if len(name) == 0 || !names[name[0]] {
			t.Fatalf("GET http://echo/ = %q, want an answer from one of %v", out, names)
		}
		seen[name[0]]++
	}
	if len(seen) < 2 {
		t.Fatalf("requests to the ClusterIP for 30 s reached only %v of %d endpoints", seen, len(names))
	}
}

// testInClusterConfig: kubectl with no kubeconfig in a pod finds the API
// server from the Service environment and authenticates with the
// projected service-account token, through kube-proxy and the forwarder.
func testInClusterConfig(t *testing.T, n *Node, cs kubernetes.Interface, ns, kubectl string) {
	ctx := t.Context()
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "whoami"},
		Spec: corev1.PodSpec{
			RestartPolicy: corev1.RestartPolicyNever,
			Containers: []corev1.Container{{
				Name: "kubectl", Image: ToolsImage,
				Command: []string{"sh", "-c", `echo "env $KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT"; exec "$0" auth whoami -o jsonpath='{.status.userInfo.username}'`, kubectl},
				// kubectl's cache goes to the pod's own /tmp.
				Env:          []corev1.EnvVar{{Name: "HOME", Value: "/tmp"}},
				VolumeMounts: []corev1.VolumeMount{{Name: "tmp", MountPath: "/tmp"}},
			}},
			Volumes: []corev1.Volume{{Name: "tmp", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}}},
		},
	}
	if _, err := cs.CoreV1().Pods(ns).Create(ctx, p, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	var phase corev1.PodPhase
	waitFor(t, 60*time.Second, "whoami pod finished", func() error {
		got, err := cs.CoreV1().Pods(ns).Get(ctx, p.Name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		phase = got.Status.Phase
		if phase != corev1.PodSucceeded && phase != corev1.PodFailed {
			return fmt.Errorf("phase %s", phase)
		}
		return nil
	})
	out, _ := os.ReadFile(n.logPath(ns, p.Name, "kubectl", false))
	want := "env 198.18.192.1:443\nsystem:serviceaccount:" + ns + ":default"
	if phase != corev1.PodSucceeded || strings.TrimSpace(string(out)) != want {
		t.Fatalf("kubectl auth whoami in a pod: phase %s, output %q; want %q", phase, out, want)
	}
}

// testNodePort: a NodePort answers on the node's bridge address, and on no
// other (loopback here): kube-proxy neither binds nor translates it there.
func testNodePort(t *testing.T, cs kubernetes.Interface, ns string, names map[string]bool) {
	ctx := t.Context()
	svc, err := cs.CoreV1().Services(ns).Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "echo-np"},
		Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeNodePort, Selector: map[string]string{"app": "echo"}, Ports: []corev1.ServicePort{
			{Port: 80, TargetPort: intstr.FromInt32(8080)},
		}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	port := strconv.Itoa(int(svc.Spec.Ports[0].NodePort))
	hc := &http.Client{Timeout: 2 * time.Second}
	get := func(host string) (string, error) {
		resp, err := hc.Get("http://" + net.JoinHostPort(host, port) + "/")
		if err != nil {
			return "", err
		}
		defer resp.Body.Close()
		b := make([]byte, 256)
		k, _ := resp.Body.Read(b)
		return string(b[:k]), nil
	}
	waitFor(t, 30*time.Second, "NodePort "+port+" on "+NodeIP, func() error {
		body, err := get(NodeIP)
		if err != nil {
			return err
		}
		if f := strings.Fields(strings.TrimPrefix(body, "hello from ")); len(f) == 0 || !names[f[0]] {
			return fmt.Errorf("answer %q is from none of %v", body, names)
		}
		return nil
	})
	if body, err := get("127.0.0.1"); err == nil {
		t.Errorf("NodePort %s answers on 127.0.0.1: %q", port, body)
	}
	if out, _ := exec.Command("ss", "-Hltn", "sport = :"+port).Output(); len(strings.TrimSpace(string(out))) > 0 {
		t.Errorf("something listens on NodePort %s:\n%s", port, out)
	}
}

// inNetns runs f on a thread in the named network namespace: sockets f
// opens stay there after the thread returns to the node's.
func inNetns[T any](t *testing.T, netns string, f func() (T, error)) T {
	t.Helper()
	runtime.LockOSThread()
	self, err := os.Open("/proc/thread-self/ns/net")
	if err != nil {
		runtime.UnlockOSThread()
		t.Fatal(err)
	}
	defer self.Close()
	target, err := os.Open("/run/netns/" + netns)
	if err != nil {
		runtime.UnlockOSThread()
		t.Fatal(err)
	}
	defer target.Close()
	if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
		runtime.UnlockOSThread()
		t.Fatal(err)
	}
	v, ferr := f()
	if err := unix.Setns(int(self.Fd()), unix.CLONE_NEWNET); err != nil {
		// The thread stays locked, so it ends with this goroutine
		// instead of running others in the wrong namespace.
		t.Fatalf("back to the node's namespace: %v", err)
	}
	runtime.UnlockOSThread()
	if ferr != nil {
		t.Fatal(ferr)
	}
	return v
}

// testForwardGuard: forwarding is on for the bridge, so only the guard
// keeps a pod's packet for an address routed through another interface
// from leaving. A second namespace behind its own veth plays "elsewhere";
// UDP one way, so the verdict is the forward path's alone. Its addresses
// are in neither the pod nor the Service range (kube-proxy rejects
// unallocated ClusterIPs itself). With the guard
// nothing arrives; with its rules flushed (the control) datagrams do.
func testForwardGuard(t *testing.T, ns string) {
	const (
		outside = "meshfwd-guard"
		hostIf  = "vhfwdguard"
		hostIP  = "198.18.191.253"
		farIP   = "198.18.191.254"
	)
	t.Cleanup(func() {
		_ = ipcmd("link", "del", hostIf)
		_ = ipcmd("netns", "del", outside)
		if err := nft(guardRules()); err != nil { // back, if the control left it flushed
			t.Error(err)
		}
	})
	podNetns := NetnsName(ns, "client")
	for _, args := range [][]string{
		{"netns", "add", outside},
		{"link", "add", hostIf, "type", "veth", "peer", "name", "eth0", "netns", outside},
		{"addr", "add", hostIP + "/30", "dev", hostIf},
		{"link", "set", hostIf, "up"},
		{"netns", "exec", outside, "ip", "addr", "add", farIP + "/30", "dev", "eth0"},
		{"netns", "exec", outside, "ip", "link", "set", "eth0", "up"},
		// The pod's /16 would make it look on-link: route it via the node.
		{"netns", "exec", podNetns, "ip", "route", "add", "198.18.191.252/30", "via", NodeIP},
	} {
		if err := ipcmd(args...); err != nil {
			t.Fatal(err)
		}
	}
	rx := inNetns(t, outside, func() (net.PacketConn, error) { return net.ListenPacket("udp", farIP+":9999") })
	defer rx.Close()
	tx := inNetns(t, podNetns, func() (net.Conn, error) { return net.Dial("udp", farIP+":9999") })
	defer tx.Close()
	received := func() int {
		for range 5 {
			_, _ = tx.Write([]byte("out"))
		}
		got := 0
		buf := make([]byte, 16)
		for {
			_ = rx.SetReadDeadline(time.Now().Add(time.Second))
			if _, _, err := rx.ReadFrom(buf); err != nil {
				return got
			}
			got++
		}
	}
	if got := received(); got != 0 {
		t.Fatalf("%d of 5 datagrams from a pod left the bridge through %s", got, hostIf)
	}
	family, name, _ := strings.Cut(guardTable, " ")
	if out, err := exec.Command("nft", "flush", "chain", family, name, "forward").CombinedOutput(); err != nil {
		t.Fatalf("flush the guard: %v: %s", err, out)
	}
	if got := received(); got == 0 {
		t.Fatal("control: with the guard flushed no datagram arrived either, so the test proves nothing")
	}
}

// TestDownServicesAfterCrash: what a dead agent's services leave (the
// guard table, kube-proxy's tables, pods' resolv.conf) is removed by Down.
func TestDownServicesAfterCrash(t *testing.T) {
	prereq.Root(t)
	prereq.Command(t, "nft")
	unlock, err := lockNetwork()
	if err != nil {
		t.Fatal(err)
	}
	err = nft(guardRules())
	if err == nil {
		// kube-proxy's tables, as a killed kube-proxy leaves them.
		err = nft("table ip kube-proxy {\n\tchain x {\n\t}\n}\ntable ip6 kube-proxy {\n}\n")
	}
	crashed := dnsPod(corev1.DNSClusterFirst, false, nil)
	if err == nil {
		err = writeResolvConf(crashed, NetnsName("crash", "dns"))
	}
	unlock() // the "crash": Down takes the lock itself
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(netnsEtc, NetnsName("crash", "dns"), "resolv.conf")); err != nil {
		t.Fatalf("resolv.conf not written: %v", err)
	}
	if err := Down(); err != nil {
		t.Fatal(err)
	}
	for _, table := range append([]string{guardTable}, kubeProxyTables...) {
		family, name, _ := strings.Cut(table, " ")
		if exec.Command("nft", "list", "table", family, name).Run() == nil {
			t.Errorf("table %s left after Down", table)
		}
	}
	if _, err := os.Stat(filepath.Join(netnsEtc, NetnsName("crash", "dns"))); !os.IsNotExist(err) {
		t.Errorf("%s/%s left after Down: %v", netnsEtc, NetnsName("crash", "dns"), err)
	}
}

// TestKubeProxyIptablesMode: the fallback mode, used where nftables mode
// does not become healthy, serves ClusterIPs and DNS as well, and its
// chains are gone after the agent stops (startServiceNode checks).
func TestKubeProxyIptablesMode(t *testing.T) {
	prereq.Root(t)
	echo := prereq.Bin(t, "mesh-e2e-echo")
	prereq.Tool(t, "kube-proxy")
	prereq.Tool(t, "coredns")
	prereq.Command(t, "iptables-save")
	saved := kubeProxyModes
	kubeProxyModes = []string{"iptables"}
	t.Cleanup(func() { kubeProxyModes = saved })
	c := clustertest.Get(t)
	startServiceNode(t, c)
	cs := c.Client()
	// kube-proxy reports healthy before its first sync has written the
	// chains.
	waitFor(t, 30*time.Second, "kube-proxy's KUBE-SERVICES chain", func() error {
		out, err := exec.Command("iptables-save", "-t", "nat").Output()
		if err != nil || !strings.Contains(string(out), ":KUBE-SERVICES") {
			return fmt.Errorf("no KUBE-SERVICES chain in the nat table with kube-proxy in iptables mode (%v):\n%s", err, out)
		}
		return nil
	})
	if exec.Command("nft", "list", "table", "ip", "kube-proxy").Run() == nil {
		t.Fatal("kube-proxy in iptables mode made the nftables table ip kube-proxy")
	}
	waitCoreDNS(t, cs)
	const ns = "ipt"
	names := deployEcho(t, cs, ns, 2)
	createPod(t, cs, ns, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "client"}, Spec: corev1.PodSpec{Containers: []corev1.Container{echoContainer()}}})
	testClusterIP(t, ns, echo, names)
}

// waitCoreDNS waits until the CoreDNS add-on has an available replica.
func waitCoreDNS(t *testing.T, cs kubernetes.Interface) {
	t.Helper()
	waitFor(t, 2*time.Minute, "CoreDNS available", func() error {
		d, err := cs.AppsV1().Deployments(metav1.NamespaceSystem).Get(t.Context(), "coredns", metav1.GetOptions{})
		if err != nil {
			return err
		}
		if d.Status.AvailableReplicas < 1 {
			return fmt.Errorf("not available: %+v", d.Status)
		}
		return nil
	})
}
