package cluster

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/mesh-dev/mesh/e2e/prereq"
)

// The cluster's address plan. Everything stays inside 198.18.0.0/16, the
// range the local pod network owns, so that no address the cluster hands out
// is ever routed off the machine.
const (
	// NodeAddress is the host side of the pod bridge: where pods reach the
	// node, and where kubelet probes come from.
	NodeAddress = "198.18.0.1"
	// PodCIDR is the range pod IPs are allocated from.
	PodCIDR = "198.18.0.0/17"
	// ServiceCIDR is the range ClusterIPs are allocated from. The node
	// agent's kube-proxy translates it.
	ServiceCIDR = "198.18.192.0/18"
	// ServiceAccountIssuer is the issuer of the cluster's service-account
	// tokens, and their default audience.
	ServiceAccountIssuer = "https://kubernetes.default.svc.cluster.local"
)

// Config configures a local cluster.
type Config struct {
	// Dir is the cluster's working folder (PKI, etcd data, logs, pids,
	// kubeconfig). Required; created if missing.
	Dir string
	// ToolsDir holds kube-apiserver, kube-controller-manager and
	// kube-scheduler. Zero means prereq.ToolsDir().
	ToolsDir string
	// Etcd is the etcd binary. Zero means etcd from PATH.
	Etcd string
	// Logger receives progress. Zero means slog.Default().
	Logger *slog.Logger
	// StartTimeout bounds Start. Zero means 2 minutes.
	StartTimeout time.Duration
}

// Cluster is a running (or stopped) local control plane.
type Cluster struct {
	cfg   Config
	log   *slog.Logger
	pki   *pki
	spawn *spawner

	apiPort    int
	kubeconfig string
	restConfig *rest.Config
	client     kubernetes.Interface

	mu    sync.Mutex
	procs []*proc
}

// New validates cfg and prepares a cluster in cfg.Dir. It starts nothing.
func New(cfg Config) (*Cluster, error) {
	if cfg.Dir == "" {
		return nil, errors.New("cluster: Config.Dir is required")
	}
	dir, err := filepath.Abs(cfg.Dir)
	if err != nil {
		return nil, fmt.Errorf("cluster: dir %q: %w", cfg.Dir, err)
	}
	cfg.Dir = dir
	if cfg.ToolsDir == "" {
		cfg.ToolsDir = prereq.ToolsDir()
	}
	if cfg.Etcd == "" {
		p, err := exec.LookPath("etcd")
		if err != nil {
			return nil, fmt.Errorf("cluster: etcd not found on PATH (install Debian's etcd-server): %w", err)
		}
		cfg.Etcd = p
	}
	for _, b := range []string{"kube-apiserver", "kube-controller-manager", "kube-scheduler"} {
		if _, err := os.Stat(filepath.Join(cfg.ToolsDir, b)); err != nil {
			return nil, fmt.Errorf("cluster: %s not found in %s (run `make tools`): %w", b, cfg.ToolsDir, err)
		}
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.StartTimeout == 0 {
		cfg.StartTimeout = 2 * time.Minute
	}
	return &Cluster{cfg: cfg, log: cfg.Logger}, nil
}

// Dir is the cluster's working folder.
func (c *Cluster) Dir() string { return c.cfg.Dir }

// KubeconfigPath is the admin kubeconfig, usable by kubectl and helm.
func (c *Cluster) KubeconfigPath() string { return c.kubeconfig }

// RESTConfig is an admin client configuration.
func (c *Cluster) RESTConfig() *rest.Config { return rest.CopyConfig(c.restConfig) }

// Client is an admin clientset.
func (c *Cluster) Client() kubernetes.Interface { return c.client }

// ServiceAccountIssuer is the issuer (and default audience) of the
// cluster's service-account tokens.
func (c *Cluster) ServiceAccountIssuer() string { return ServiceAccountIssuer }

// APIServerURL is the API server's address on loopback.
func (c *Cluster) APIServerURL() string { return fmt.Sprintf("https://127.0.0.1:%d", c.apiPort) }

// APIServerPort is the API server's port on loopback. The kubernetes
// Service's endpoint is the node's address on the same port, which the
// node agent forwards here.
func (c *Cluster) APIServerPort() int { return c.apiPort }

// CACertPath and CAKeyPath are the cluster CA, which signs the API server's
// serving certificate and every client certificate it accepts. The node
// agent uses them to make its kubelet serving and node client certificates.
func (c *Cluster) CACertPath() string { return c.pki.path("ca.crt") }

// CAKeyPath is the cluster CA's private key. See CACertPath.
func (c *Cluster) CAKeyPath() string { return c.pki.path("ca.key") }

func (c *Cluster) logPath(name string) string { return filepath.Join(c.cfg.Dir, "logs", name+".log") }
func (c *Cluster) pidDir() string             { return filepath.Join(c.cfg.Dir, "pids") }

// Start brings up etcd, kube-apiserver, kube-controller-manager and
// kube-scheduler, and returns when the API server is ready and the
// controllers work. On error everything started is stopped again, and the
// error carries the tail of the failing component's log.
func (c *Cluster) Start(ctx context.Context) (err error) {
	ctx, cancel := context.WithTimeout(ctx, c.cfg.StartTimeout)
	defer cancel()
	// A previous owner may have crashed: never run two etcds on one data dir.
	if err := Down(c.cfg.Dir); err != nil {
		return err
	}
	for _, d := range []string{"logs", "pids"} {
		if err := os.MkdirAll(filepath.Join(c.cfg.Dir, d), 0o755); err != nil {
			return fmt.Errorf("cluster: %w", err)
		}
	}
	if c.pki, err = loadOrCreatePKI(filepath.Join(c.cfg.Dir, "pki")); err != nil {
		return err
	}
	// The components' ports are reserved and released before they bind
	// them (etcd and kube-apiserver take seconds to), so another process
	// can take one meanwhile: then everything stops and starts again on
	// other ports.
	for attempt := 1; ; attempt++ {
		err = c.start(ctx)
		if err == nil || attempt == 3 || !strings.Contains(err.Error(), "address already in use") {
			return err
		}
		c.log.Warn("cluster: a port was taken before its component bound it; starting again on other ports", "attempt", attempt, "err", err)
	}
}

// start is one attempt of Start, which has made the directories and the
// PKI.
func (c *Cluster) start(ctx context.Context) (err error) {
	c.spawn = newSpawner()
	defer func() {
		if err != nil {
			_ = c.Stop()
		}
	}()

	ports, err := reservePorts(5)
	if err != nil {
		return err
	}
	etcdPort, etcdPeer, cmPort, schedPort := ports[0], ports[1], ports[2], ports[3]
	c.apiPort = ports[4]

	if err := c.startEtcd(etcdPort, etcdPeer); err != nil {
		return err
	}
	// etcd answers before kube-apiserver starts: else an etcd that could
	// not bind its port fails later, as kube-apiserver's timeout, without
	// saying why.
	etcdHealth := fmt.Sprintf("http://127.0.0.1:%d/health", etcdPort)
	if err := c.poll(ctx, "etcd", etcdHealth, func(ctx context.Context) error {
		return get(ctx, http.DefaultClient, etcdHealth)
	}); err != nil {
		return err
	}
	if err := c.startAPIServer(ctx, etcdPort); err != nil {
		return err
	}
	if err := c.writeClients(); err != nil {
		return err
	}
	if err := c.startControllerManager(ctx, cmPort); err != nil {
		return err
	}
	if err := c.startScheduler(ctx, schedPort); err != nil {
		return err
	}
	// The ServiceAccount admission plugin refuses pods until the namespace's
	// default ServiceAccount exists, which the controller-manager makes.
	if err := c.poll(ctx, "kube-controller-manager", "the default ServiceAccount", func(ctx context.Context) error {
		_, err := c.client.CoreV1().ServiceAccounts("default").Get(ctx, "default", metav1.GetOptions{})
		return err
	}); err != nil {
		return err
	}
	if err := installAddons(ctx, c.client); err != nil {
		return err
	}
	c.log.Info("cluster ready", "dir", c.cfg.Dir, "apiserver", c.APIServerURL(), "kubeconfig", c.kubeconfig)
	return nil
}

func (c *Cluster) startEtcd(port, peer int) error {
	client := fmt.Sprintf("http://127.0.0.1:%d", port)
	peerURL := fmt.Sprintf("http://127.0.0.1:%d", peer)
	data := filepath.Join(c.cfg.Dir, "etcd")
	if err := os.MkdirAll(data, 0o700); err != nil {
		return fmt.Errorf("cluster: %w", err)
	}
	return c.run("etcd", c.cfg.Etcd,
		"--name=mesh-e2e",
		"--data-dir="+data,
		"--listen-client-urls="+client,
		"--advertise-client-urls="+client,
		"--listen-peer-urls="+peerURL,
		"--initial-advertise-peer-urls="+peerURL,
		"--initial-cluster=mesh-e2e="+peerURL,
		"--initial-cluster-state=new",
		"--logger=zap",
		"--log-outputs=stderr",
		"--quota-backend-bytes=2147483648",
	)
}

func (c *Cluster) startAPIServer(ctx context.Context, etcdPort int) error {
	p := c.pki
	serving, servingKey, err := p.issue(leaf{
		name: "apiserver", cn: "kube-apiserver", server: true,
		dns: []string{"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local"},
		ips: []net.IP{net.ParseIP("127.0.0.1"), net.ParseIP(NodeAddress), firstIP(ServiceCIDR)},
	})
	if err != nil {
		return err
	}
	kubeletClient, kubeletClientKey, err := p.issue(leaf{name: "apiserver-kubelet-client", cn: "kube-apiserver-kubelet-client", orgs: []string{"system:masters"}, client: true})
	if err != nil {
		return err
	}
	proxyClient, proxyClientKey, err := p.issue(leaf{name: "front-proxy-client", cn: "front-proxy-client", client: true})
	if err != nil {
		return err
	}
	saPub, saKey, err := p.serviceAccountKey()
	if err != nil {
		return err
	}
	if err := c.run("kube-apiserver", filepath.Join(c.cfg.ToolsDir, "kube-apiserver"),
		fmt.Sprintf("--etcd-servers=http://127.0.0.1:%d", etcdPort),
		"--bind-address=127.0.0.1",
		fmt.Sprintf("--secure-port=%d", c.apiPort),
		"--advertise-address="+NodeAddress,
		"--service-cluster-ip-range="+ServiceCIDR,
		"--tls-cert-file="+serving,
		"--tls-private-key-file="+servingKey,
		"--client-ca-file="+p.path("ca.crt"),
		"--authorization-mode=Node,RBAC",
		"--enable-admission-plugins=NodeRestriction",
		"--allow-privileged=true",
		"--service-account-issuer="+ServiceAccountIssuer,
		"--service-account-key-file="+saPub,
		"--service-account-signing-key-file="+saKey,
		"--api-audiences="+ServiceAccountIssuer,
		"--enable-aggregator-routing=true",
		"--kubelet-client-certificate="+kubeletClient,
		"--kubelet-client-key="+kubeletClientKey,
		"--kubelet-certificate-authority="+p.path("ca.crt"),
		"--kubelet-preferred-address-types=InternalIP",
		"--requestheader-client-ca-file="+p.path("ca.crt"),
		"--requestheader-allowed-names=front-proxy-client",
		"--requestheader-username-headers=X-Remote-User",
		"--requestheader-group-headers=X-Remote-Group",
		"--requestheader-extra-headers-prefix=X-Remote-Extra-",
		"--proxy-client-cert-file="+proxyClient,
		"--proxy-client-key-file="+proxyClientKey,
		"--profiling=false",
		"--v=1",
	); err != nil {
		return err
	}
	admin, adminKey, err := p.issue(leaf{name: "admin", cn: "mesh-e2e-admin", orgs: []string{"system:masters"}, client: true})
	if err != nil {
		return err
	}
	hc, err := c.httpClient(admin, adminKey)
	if err != nil {
		return err
	}
	return c.poll(ctx, "kube-apiserver", "/readyz", func(ctx context.Context) error {
		return get(ctx, hc, c.APIServerURL()+"/readyz")
	})
}

// writeClients writes the admin kubeconfig and builds the admin clients.
func (c *Cluster) writeClients() error {
	c.kubeconfig = filepath.Join(c.cfg.Dir, "kubeconfig")
	if err := c.WriteKubeconfig(c.kubeconfig, "mesh-e2e-admin", []string{"system:masters"}); err != nil {
		return err
	}
	cfg := &rest.Config{
		Host: c.APIServerURL(),
		TLSClientConfig: rest.TLSClientConfig{
			CAFile:   c.pki.path("ca.crt"),
			CertFile: c.pki.path("admin.crt"),
			KeyFile:  c.pki.path("admin.key"),
		},
		QPS:   200,
		Burst: 400,
	}
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return fmt.Errorf("cluster: admin client: %w", err)
	}
	c.restConfig, c.client = cfg, client
	return nil
}

func (c *Cluster) startControllerManager(ctx context.Context, port int) error {
	return c.startController(ctx, "kube-controller-manager", "system:kube-controller-manager", port,
		"--use-service-account-credentials=true",
		"--service-account-private-key-file="+c.pki.path("sa.key"),
		"--root-ca-file="+c.pki.path("ca.crt"),
		"--cluster-signing-cert-file="+c.pki.path("ca.crt"),
		"--cluster-signing-key-file="+c.pki.path("ca.key"),
		"--service-cluster-ip-range="+ServiceCIDR,
		"--controllers=*",
	)
}

func (c *Cluster) startScheduler(ctx context.Context, port int) error {
	return c.startController(ctx, "kube-scheduler", "system:kube-scheduler", port)
}

// startController runs a control-plane component that talks to the API
// server as user, serves its health on a loopback port, and is ready when
// /healthz answers.
func (c *Cluster) startController(ctx context.Context, name, user string, port int, extra ...string) error {
	kc := filepath.Join(c.cfg.Dir, strings.TrimPrefix(name, "kube-")+".kubeconfig")
	if err := c.WriteKubeconfig(kc, user, nil); err != nil {
		return err
	}
	serving, servingKey, err := c.servingCert()
	if err != nil {
		return err
	}
	args := append([]string{
		"--kubeconfig=" + kc,
		"--authentication-kubeconfig=" + kc,
		"--authorization-kubeconfig=" + kc,
		"--bind-address=127.0.0.1",
		fmt.Sprintf("--secure-port=%d", port),
		"--tls-cert-file=" + serving,
		"--tls-private-key-file=" + servingKey,
		"--leader-elect=false",
		"--profiling=false",
		"--v=1",
	}, extra...)
	if err := c.run(name, filepath.Join(c.cfg.ToolsDir, name), args...); err != nil {
		return err
	}
	return c.pollHealthz(ctx, name, port)
}

// servingCert is the certificate the controller-manager and scheduler serve
// their health endpoints with on loopback.
func (c *Cluster) servingCert() (string, string, error) {
	return c.pki.issue(leaf{name: "loopback-serving", cn: "localhost", server: true, dns: []string{"localhost"}, ips: []net.IP{net.ParseIP("127.0.0.1")}})
}

func (c *Cluster) pollHealthz(ctx context.Context, name string, port int) error {
	pool := x509.NewCertPool()
	pool.AddCert(c.pki.caCert)
	hc := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	return c.poll(ctx, name, "/healthz", func(ctx context.Context) error {
		return get(ctx, hc, fmt.Sprintf("https://127.0.0.1:%d/healthz", port))
	})
}

// WriteKubeconfig writes a kubeconfig for the API server that authenticates
// with a new client certificate for user in groups, signed by the cluster CA.
// The node agent uses it for system:node:<name> in system:nodes.
func (c *Cluster) WriteKubeconfig(path, user string, groups []string) error {
	name := "client-" + strings.NewReplacer(":", "-", "/", "-").Replace(user)
	cert, key, err := c.pki.issue(leaf{name: name, cn: user, orgs: groups, client: true})
	if err != nil {
		return err
	}
	kc := fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: mesh-e2e
  cluster:
    server: %s
    certificate-authority: %s
users:
- name: %s
  user:
    client-certificate: %s
    client-key: %s
contexts:
- name: mesh-e2e
  context:
    cluster: mesh-e2e
    user: %s
current-context: mesh-e2e
`, c.APIServerURL(), c.pki.path("ca.crt"), strconv.Quote(user), cert, key, strconv.Quote(user))
	if err := os.WriteFile(path, []byte(kc), 0o600); err != nil {
		return fmt.Errorf("cluster: write kubeconfig %s: %w", path, err)
	}
	return nil
}

// run starts one component with its output in logs/<name>.log.
func (c *Cluster) run(name, bin string, args ...string) error {
	logf, err := os.OpenFile(c.logPath(name), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("cluster: open log of %s: %w", name, err)
	}
	defer logf.Close()
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Dir = c.cfg.Dir
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := c.spawn.start(cmd); err != nil {
		return fmt.Errorf("cluster: start %s: %w", name, err)
	}
	p := &proc{name: name, cmd: cmd, logPath: c.logPath(name), exited: make(chan struct{})}
	go func() {
		p.waitErr = cmd.Wait()
		close(p.exited)
	}()
	c.mu.Lock()
	c.procs = append(c.procs, p)
	c.mu.Unlock()
	c.log.Debug("started", "component", name, "pid", cmd.Process.Pid)
	return writePID(c.pidDir(), name, cmd.Process.Pid, bin)
}

func (c *Cluster) proc(name string) *proc {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, p := range c.procs {
		if p.name == name {
			return p
		}
	}
	return nil
}

// poll calls check until it succeeds, the component exits, or ctx ends.
func (c *Cluster) poll(ctx context.Context, component, what string, check func(context.Context) error) error {
	p := c.proc(component)
	var last error
	for {
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		last = check(cctx)
		cancel()
		if last == nil {
			return nil
		}
		if p != nil && !p.running() {
			return fmt.Errorf("cluster: %s exited (%v) before %s was ready; last lines of %s:\n%s", component, p.waitErr, what, p.logPath, tail(p.logPath, 30))
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("cluster: %s not ready (%s) within %s: %w; last lines of %s:\n%s", component, what, c.cfg.StartTimeout, last, c.logPath(component), tail(c.logPath(component), 30))
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// Stop terminates every component (newest first) and waits for them. It is
// idempotent. The cluster's folder is kept (logs, PKI); etcd's data is not
// reused by the next Start.
func (c *Cluster) Stop() error {
	c.mu.Lock()
	procs := c.procs
	c.procs = nil
	c.mu.Unlock()
	for i := len(procs) - 1; i >= 0; i-- {
		p := procs[i]
		if p.running() {
			_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGTERM)
			select {
			case <-p.exited:
			case <-time.After(10 * time.Second):
				_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
				<-p.exited
			}
		}
		_ = os.Remove(filepath.Join(c.pidDir(), p.name+".pid"))
	}
	if c.spawn != nil {
		c.spawn.close()
	}
	if err := os.RemoveAll(filepath.Join(c.cfg.Dir, "etcd")); err != nil {
		return fmt.Errorf("cluster: remove etcd data: %w", err)
	}
	return nil
}

// Down finds the processes a cluster in dir left behind (its owner crashed
// or was killed), terminates them, and removes etcd's data. A dir with no
// cluster is fine. Processes are matched by pid and program, so a recycled
// pid is never killed.
func Down(dir string) error {
	pidDir := filepath.Join(dir, "pids")
	recs, err := readPIDs(pidDir)
	if err != nil {
		return fmt.Errorf("cluster: read pids in %s: %w", pidDir, err)
	}
	// Supervisors first (they would restart or outlive their children),
	// then components, the API server before etcd.
	order := map[string]int{"supervisor": 0, "kube-scheduler": 1, "kube-controller-manager": 2, "kube-apiserver": 3, "etcd": 4}
	rank := func(r pidRecord) int {
		if v, ok := order[r.name]; ok {
			return v
		}
		return 0
	}
	for pass := 0; pass <= 4; pass++ {
		for _, r := range recs {
			if rank(r) != pass {
				continue
			}
			grace := 10 * time.Second
			if r.name == "supervisor" {
				// It stops its node agent first, whose pods have their own
				// grace periods (30 s by default), then each component
				// (10 s at most): killed sooner, it leaves them to the
				// passes below, pods and all.
				grace = 90 * time.Second
			}
			r.terminate(grace)
		}
	}
	var errs []error
	for _, r := range recs {
		if r.alive() && !isZombie(r.pid) {
			errs = append(errs, fmt.Errorf("cluster: %s (pid %d) did not stop", r.name, r.pid))
			continue
		}
		_ = os.Remove(r.file)
	}
	if err := os.RemoveAll(filepath.Join(dir, "etcd")); err != nil {
		errs = append(errs, fmt.Errorf("cluster: remove etcd data: %w", err))
	}
	return errors.Join(errs...)
}

func (c *Cluster) httpClient(cert, key string) (*http.Client, error) {
	pair, err := tls.LoadX509KeyPair(cert, key)
	if err != nil {
		return nil, fmt.Errorf("cluster: load %s: %w", cert, err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(c.pki.caCert)
	return &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{pair}},
	}}, nil
}

func get(ctx context.Context, hc *http.Client, url string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	return nil
}

// reservePorts is freePorts; tests replace it to take a port first.
var reservePorts = freePorts

// freePorts reserves n distinct loopback ports. They are released before the
// components bind them; Start starts again on a clash.
func freePorts(n int) ([]int, error) {
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	ports := make([]int, 0, n)
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("cluster: reserve port: %w", err)
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

// firstIP is the first address of a CIDR: the kubernetes Service's ClusterIP.
func firstIP(cidr string) net.IP {
	_, n, err := net.ParseCIDR(cidr)
	if err != nil {
		return nil
	}
	ip := n.IP.To4()
	out := make(net.IP, len(ip))
	copy(out, ip)
	out[len(out)-1]++
	return out
}
