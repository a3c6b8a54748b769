package node

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// The ranges kube-proxy's rules are confined to: e2e/cluster's address
// plan, repeated so that the agent does not depend on the control plane's
// package (TestAddressPlan keeps them equal).
const (
	// PodCIDR is where pod IPs come from: kube-proxy's cluster CIDR, which
	// tells pod traffic from the node's own.
	PodCIDR = "198.18.0.0/17"
	// ServiceCIDR is where ClusterIPs come from. Pods route it through the
	// node, where kube-proxy's rules translate it.
	ServiceCIDR = "198.18.192.0/18"
)

// kubeProxyModes are tried in order: nftables keeps every rule in one
// table of its own (ip kube-proxy) that is removed whole; iptables is the
// fallback for a kernel or nft without what kube-proxy needs.
var kubeProxyModes = []string{"nftables", "iptables"}

// kubeProxyTables are what kube-proxy's nftables mode creates; Down and
// the stop path remove them.
var kubeProxyTables = []string{"ip kube-proxy", "ip6 kube-proxy"}

// kubeProxy is the node's kube-proxy process.
type kubeProxy struct {
	bin, config, mode string
	cmd               *exec.Cmd
	exited            chan struct{}
	logPath           string
}

// kubeProxyConfig renders kube-proxy's configuration: rules only for
// Services of the pod network, NodePorts on the bridge address only, no
// conntrack sysctl changed, health and metrics on loopback only.
func kubeProxyConfig(kubeconfig, nodeName, mode string, healthzPort, metricsPort int) ([]byte, error) {
	if mode != "nftables" && mode != "iptables" {
		return nil, fmt.Errorf("node: kube-proxy mode %q is not nftables or iptables", mode)
	}
	zero := "0s"
	cfg := map[string]any{
		"apiVersion":         "kubeproxy.config.k8s.io/v1alpha1",
		"kind":               "KubeProxyConfiguration",
		"clientConnection":   map[string]any{"kubeconfig": kubeconfig, "qps": 20, "burst": 40},
		"hostnameOverride":   nodeName,
		"bindAddress":        NodeIP,
		"healthzBindAddress": net.JoinHostPort("127.0.0.1", strconv.Itoa(healthzPort)),
		"metricsBindAddress": net.JoinHostPort("127.0.0.1", strconv.Itoa(metricsPort)),
		"enableProfiling":    false,
		"mode":               mode,
		"clusterCIDR":        PodCIDR,
		"detectLocalMode":    "ClusterCIDR",
		"nodePortAddresses":  []string{NodeIP + "/32"},
		// The machine's conntrack table is not ours: maxPerCore and min 0
		// leave nf_conntrack_max alone, zero timeouts leave the timeouts.
		"conntrack": map[string]any{
			"maxPerCore": 0, "min": 0,
			"tcpEstablishedTimeout": zero, "tcpCloseWaitTimeout": zero,
			"udpTimeout": zero, "udpStreamTimeout": zero,
		},
		// localhostNodePorts would set route_localnet on every interface.
		"iptables":         map[string]any{"localhostNodePorts": false, "syncPeriod": "30s", "minSyncPeriod": "0s"},
		"nftables":         map[string]any{"syncPeriod": "30s", "minSyncPeriod": "0s"},
		"configSyncPeriod": "15m0s",
		// It keeps the agent's own OOM score; the default -999 is for a
		// system daemon.
		"oomScoreAdj": 0,
	}
	return json.MarshalIndent(cfg, "", "  ")
}

// checkBridgeNetfilter fails unless bridged IPv4 traffic passes through
// netfilter: a reply from a Service's endpoint to a client pod is bridged,
// not routed, and only conntrack on the bridge turns its source back into
// the ClusterIP the client dialled.
func checkBridgeNetfilter() error {
	const p = "/proc/sys/net/bridge/bridge-nf-call-iptables"
	b, err := os.ReadFile(p)
	if err != nil {
		return fmt.Errorf("node: kube-proxy needs net.bridge.bridge-nf-call-iptables=1, but %s cannot be read (is br_netfilter loaded? `modprobe br_netfilter`): %w", p, err)
	}
	if v := strings.TrimSpace(string(b)); v != "1" {
		return fmt.Errorf("node: kube-proxy needs net.bridge.bridge-nf-call-iptables=1 (replies between pods on the bridge are otherwise not un-NATed), it is %s: run `sysctl -w net.bridge.bridge-nf-call-iptables=1`", v)
	}
	return nil
}

// startKubeProxy runs kube-proxy in the first mode that becomes healthy.
func (n *Node) startKubeProxy(ctx context.Context) (*kubeProxy, error) {
	bin := filepath.Join(n.cfg.ToolsDir, "kube-proxy")
	if _, err := os.Stat(bin); err != nil {
		return nil, fmt.Errorf("node: kube-proxy not built in %s (run `make tools`): %w", n.cfg.ToolsDir, err)
	}
	if err := checkBridgeNetfilter(); err != nil {
		return nil, err
	}
	var errs []error
	for _, mode := range kubeProxyModes {
		kp, err := n.runKubeProxy(ctx, bin, mode)
		if err == nil {
			n.cfg.Logger.Info("kube-proxy running", "mode", mode, "log", kp.logPath)
			return kp, nil
		}
		n.cfg.Logger.Warn("kube-proxy mode failed", "mode", mode, "err", err)
		errs = append(errs, err)
	}
	return nil, errors.Join(errs...)
}

func (n *Node) runKubeProxy(ctx context.Context, bin, mode string) (*kubeProxy, error) {
	ports, err := loopbackPorts(2)
	if err != nil {
		return nil, err
	}
	cfg, err := kubeProxyConfig(n.cfg.KubeProxyKubeconfig, n.cfg.Name, mode, ports[0], ports[1])
	if err != nil {
		return nil, err
	}
	kp := &kubeProxy{bin: bin, mode: mode, config: filepath.Join(n.cfg.Dir, "kube-proxy.json"), logPath: filepath.Join(n.cfg.Dir, "logs", "kube-proxy.log"), exited: make(chan struct{})}
	if err := os.WriteFile(kp.config, cfg, 0o600); err != nil {
		return nil, fmt.Errorf("node: kube-proxy config: %w", err)
	}
	logf, err := os.OpenFile(kp.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("node: kube-proxy log: %w", err)
	}
	defer logf.Close()
	kp.cmd = exec.Command(bin, "--config="+kp.config, "--v=1")
	kp.cmd.Stdout, kp.cmd.Stderr = logf, logf
	kp.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	errc := make(chan error, 1)
	n.spawn <- func() { errc <- kp.cmd.Start() }
	if err := <-errc; err != nil {
		return nil, fmt.Errorf("node: start kube-proxy: %w", err)
	}
	go func() { _ = kp.cmd.Wait(); close(kp.exited) }()
	// Ready once /healthz says the IPv4 rules were synced (it answers 200
	// from the start, before any sync).
	url := fmt.Sprintf("http://127.0.0.1:%d/healthz", ports[0])
	hc := &http.Client{Timeout: time.Second}
	deadline := time.Now().Add(30 * time.Second)
	for {
		select {
		case <-kp.exited:
			kp.cleanup()
			return nil, fmt.Errorf("node: kube-proxy (%s mode) exited: %v; last lines of %s:\n%s", mode, kp.cmd.ProcessState, kp.logPath, tailFile(kp.logPath, 20))
		case <-ctx.Done():
			_ = kp.stop()
			return nil, ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
		if resp, err := hc.Get(url); err == nil {
			body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK && synced(body) {
				return kp, nil
			}
		}
		if time.Now().After(deadline) {
			_ = kp.stop()
			return nil, fmt.Errorf("node: kube-proxy (%s mode) not healthy within 30s; last lines of %s:\n%s", mode, kp.logPath, tailFile(kp.logPath, 20))
		}
	}
}

// synced reports whether a /healthz answer of kube-proxy says its IPv4
// rules have been written at least once.
func synced(healthz []byte) bool {
	var h struct {
		Healthy bool `json:"healthy"`
		Status  map[string]struct {
			LastUpdated time.Time `json:"lastUpdated"`
			Healthy     bool      `json:"healthy"`
		} `json:"status"`
	}
	if json.Unmarshal(healthz, &h) != nil {
		return false
	}
	v4, ok := h.Status["IPv4"]
	return h.Healthy && ok && v4.Healthy && !v4.LastUpdated.IsZero()
}

// stop ends kube-proxy and removes every rule it made.
func (kp *kubeProxy) stop() error {
	_ = syscall.Kill(-kp.cmd.Process.Pid, syscall.SIGTERM)
	select {
	case <-kp.exited:
	case <-time.After(10 * time.Second):
		_ = syscall.Kill(-kp.cmd.Process.Pid, syscall.SIGKILL)
		<-kp.exited
	}
	return kp.cleanup()
}

// cleanup removes kube-proxy's rules: its own --cleanup for the iptables
// chains, KUBE-FIREWALL (which it makes but leaves to the kubelet it
// thinks is there), and the nftables tables by name.
func (kp *kubeProxy) cleanup() error {
	var errs []error
	if kp.mode == "iptables" {
		if out, err := exec.Command(kp.bin, "--cleanup", "--config="+kp.config).CombinedOutput(); err != nil {
			errs = append(errs, fmt.Errorf("node: kube-proxy --cleanup: %w: %s", err, bytes.TrimSpace(out)))
		}
		errs = append(errs, removeKubeFirewall())
	}
	if err := deleteNftTables(kubeProxyTables...); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// removeKubeFirewall removes the filter table's KUBE-FIREWALL chain and
// its jumps from INPUT and OUTPUT, for IPv4 and IPv6, where they exist.
func removeKubeFirewall() error {
	var errs []error
	for _, ipt := range []string{"iptables", "ip6tables"} {
		if _, err := exec.LookPath(ipt); err != nil || exec.Command(ipt, "-w", "-t", "filter", "-nL", "KUBE-FIREWALL").Run() != nil {
			continue
		}
		for _, from := range []string{"INPUT", "OUTPUT"} {
			for range 8 { // one jump each, unless something added more
				if exec.Command(ipt, "-w", "-t", "filter", "-D", from, "-j", "KUBE-FIREWALL").Run() != nil {
					break
				}
			}
		}
		for _, args := range [][]string{{"-F", "KUBE-FIREWALL"}, {"-X", "KUBE-FIREWALL"}} {
			if out, err := exec.Command(ipt, append([]string{"-w", "-t", "filter"}, args...)...).CombinedOutput(); err != nil {
				errs = append(errs, fmt.Errorf("node: %s %s: %w: %s", ipt, strings.Join(args, " "), err, bytes.TrimSpace(out)))
			}
		}
	}
	return errors.Join(errs...)
}

// deleteNftTables deletes the named tables ("family name") that exist.
func deleteNftTables(tables ...string) error {
	if _, err := exec.LookPath("nft"); err != nil {
		return nil // no nft, so no nftables table of ours either
	}
	var errs []error
	for _, t := range tables {
		family, name, _ := strings.Cut(t, " ")
		if exec.Command("nft", "list", "table", family, name).Run() != nil {
			continue
		}
		if out, err := exec.Command("nft", "delete", "table", family, name).CombinedOutput(); err != nil {
			errs = append(errs, fmt.Errorf("node: nft delete table %s: %w: %s", t, err, bytes.TrimSpace(out)))
		}
	}
	return errors.Join(errs...)
}

// loopbackPorts reserves n free loopback ports and releases them for the
// caller's process to bind.
func loopbackPorts(n int) ([]int, error) {
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	var ports []int
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("node: reserve a loopback port: %w", err)
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

// tailFile is the last lines of a log, for errors.
func tailFile(path string, lines int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	all := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(all) > lines {
		all = all[len(all)-lines:]
	}
	return strings.Join(all, "\n")
}
