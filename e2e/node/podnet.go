package node

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
)

// The pod network.
const (
	Bridge     = "mesh0"
	BridgeAddr = "198.18.0.1/16"
)

var (
	firstPodIP = netip.MustParseAddr("198.18.0.10")
	lastPodIP  = netip.MustParseAddr("198.18.127.254") // PodCIDR is 198.18.0.0/17
)

// NetnsName is the network namespace of a pod, as `ip netns` shows it.
func NetnsName(namespace, pod string) string {
	name := "pod-" + namespace + "-" + pod
	if len(name) > 200 {
		name = name[:200]
	}
	return name
}

func ipcmd(args ...string) error {
	out, err := exec.Command("ip", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ip %s: %w: %s", strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return nil
}

// setupBridge creates the bridge with the node's address, replacing a stale
// one.
func setupBridge() error {
	_ = ipcmd("link", "del", Bridge)
	for _, args := range [][]string{
		{"link", "add", Bridge, "type", "bridge"},
		{"addr", "add", BridgeAddr, "dev", Bridge},
		{"link", "set", Bridge, "up"},
	} {
		if err := ipcmd(args...); err != nil {
			return fmt.Errorf("node: bridge: %w", err)
		}
	}
	return nil
}

// ipam hands out pod IPs and remembers them in a file, so that a restarted
// agent never gives an address in use to another pod.
type ipam struct {
	mu    sync.Mutex
	path  string
	inUse map[netip.Addr]string // ip -> pod UID
}

func newIPAM(dir string) (*ipam, error) {
	a := &ipam{path: filepath.Join(dir, "ipam.json"), inUse: map[netip.Addr]string{}}
	b, err := os.ReadFile(a.path)
	if err == nil {
		if err := json.Unmarshal(b, &a.inUse); err != nil {
			return nil, fmt.Errorf("node: %s: %w", a.path, err)
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	return a, nil
}

func (a *ipam) allocate(uid string) (netip.Addr, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for ip, owner := range a.inUse {
		if owner == uid {
			return ip, nil
		}
	}
	for ip := firstPodIP; ip.Compare(lastPodIP) <= 0; ip = ip.Next() {
		if _, used := a.inUse[ip]; !used {
			a.inUse[ip] = uid
			return ip, a.saveLocked()
		}
	}
	return netip.Addr{}, errors.New("node: pod network exhausted")
}

func (a *ipam) release(uid string) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	for ip, owner := range a.inUse {
		if owner == uid {
			delete(a.inUse, ip)
		}
	}
	return a.saveLocked()
}

func (a *ipam) saveLocked() error {
	b, err := json.Marshal(a.inUse)
	if err != nil {
		return err
	}
	return os.WriteFile(a.path, b, 0o644)
}

// addPodNetwork creates the pod's namespace and links it to the bridge.
func addPodNetwork(netns, hostIf string, ip netip.Addr) error {
	_ = ipcmd("netns", "del", netns)
	_ = ipcmd("link", "del", hostIf)
	steps := [][]string{
		{"netns", "add", netns},
		{"link", "add", hostIf, "type", "veth", "peer", "name", "eth0", "address", podMAC(ip), "netns", netns},
		{"link", "set", hostIf, "master", Bridge},
		{"link", "set", hostIf, "up"},
		{"netns", "exec", netns, "ip", "link", "set", "lo", "up"},
		{"netns", "exec", netns, "ip", "addr", "add", ip.String() + "/16", "dev", "eth0"},
		{"netns", "exec", netns, "ip", "link", "set", "eth0", "up"},
		{"netns", "exec", netns, "ip", "route", "add", "default", "via", strings.Split(BridgeAddr, "/")[0]},
		// ClusterIPs are inside the bridge's /16 but on no pod: through
		// the node, where kube-proxy translates them.
		{"netns", "exec", netns, "ip", "route", "add", ServiceCIDR, "via", strings.Split(BridgeAddr, "/")[0]},
	}
	for _, s := range steps {
		if err := ipcmd(s...); err != nil {
			_ = removePodNetwork(netns, hostIf)
			return fmt.Errorf("node: pod network: %w", err)
		}
	}
	return nil
}

// podMAC is the pod's MAC address, made from its IP as the CNI bridge
// plugin does (0a:58 and the four bytes): an address given to a new pod
// keeps its MAC, so the neighbour caches of the node and of other pods,
// which still hold the last pod's entry, stay right. A random MAC left them
// sending to the old one for up to a minute.
func podMAC(ip netip.Addr) string {
	b := ip.As4()
	return fmt.Sprintf("0a:58:%02x:%02x:%02x:%02x", b[0], b[1], b[2], b[3])
}

func removePodNetwork(netns, hostIf string) error {
	_ = ipcmd("link", "del", hostIf)
	if err := removeResolvConf(netns); err != nil {
		return err
	}
	if err := ipcmd("netns", "del", netns); err != nil && !strings.Contains(err.Error(), "No such file") {
		return err
	}
	return nil
}

// Down removes what an agent that died without cleaning up left behind:
// its memory emptyDir mounts, the pod network namespaces (pod-*) and the
// bridge. Its processes died
// with it (parent-death signal).
func Down() error {
	unlock, err := lockNetwork()
	if err != nil {
		return err
	}
	defer unlock()
	out, err := exec.Command("ip", "netns", "list").Output()
	if err != nil {
		return fmt.Errorf("node: ip netns list: %w", err)
	}
	var errs []error
	if err := unmountRecorded(); err != nil {
		errs = append(errs, err)
	}
	if err := downServices(); err != nil {
		errs = append(errs, err)
	}
	for _, line := range strings.Split(string(out), "\n") {
		name, _, _ := strings.Cut(strings.TrimSpace(line), " ")
		if strings.HasPrefix(name, "pod-") {
			if err := ipcmd("netns", "del", name); err != nil {
				errs = append(errs, err)
			}
		}
	}
	if exec.Command("ip", "link", "show", Bridge).Run() == nil {
		if err := ipcmd("link", "del", Bridge); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// lockPath serialises node agents on a machine: the bridge and the pod
// address range are the machine's, so a second agent (another test
// package, or the demo) waits for the first to stop.
const lockPath = "/run/mesh-e2e-node.lock"

// lockNetwork blocks until this process owns the pod network.
func lockNetwork() (unlock func(), err error) {
	f, err := os.OpenFile(lockPath, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, fmt.Errorf("node: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		f.Close()
		return nil, fmt.Errorf("node: lock %s: %w", lockPath, err)
	}
	return func() {
		_ = syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
		f.Close()
	}, nil
}
