package node

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
)

// guardTable is the agent's own nftables table: it keeps routed pod
// traffic on the bridge. Forwarding is enabled on the bridge alone (the
// kernel decides by the input interface), so without it a packet from a
// pod to an address routed elsewhere would leave the machine.
const guardTable = "inet mesh-e2e-node"

func guardRules() string {
	return fmt.Sprintf(`table %s {
	chain forward {
		type filter hook forward priority filter - 10; policy accept;
		iifname %q oifname != %q drop
		iifname != %q oifname %q drop
	}
}
`, guardTable, Bridge, Bridge, Bridge, Bridge)
}

// bridgeForwarding is the sysctl that lets the node route between pods
// (a ClusterIP translated to a pod's address arrives on the bridge and
// leaves on it). The global net.ipv4.ip_forward stays as it is.
func bridgeForwarding() string {
	return "/proc/sys/net/ipv4/conf/" + Bridge + "/forwarding"
}

// ServicesReady is closed once the agent's Services work: kube-proxy has
// synced its rules and the API server's forwarder listens (at once when
// the Config asks for neither).
func (n *Node) ServicesReady() <-chan struct{} { return n.servicesUp }

// startServices makes Services work for the node's pods: the forward
// guard, forwarding on the bridge, the API server's forwarder, and
// kube-proxy. The returned stop undoes all of it.
func (n *Node) startServices(ctx context.Context) (func(), error) {
	var undo []func() error
	stop := func() {
		for i := len(undo) - 1; i >= 0; i-- {
			if err := undo[i](); err != nil {
				n.cfg.Logger.Warn("node: stop services", "err", err)
			}
		}
	}
	ok := false
	defer func() {
		if !ok {
			stop()
		}
	}()
	if n.cfg.APIServerPort != 0 {
		fwd, err := listenAPIForwarder(n.cfg.APIServerPort)
		if err != nil {
			return nil, err
		}
		fctx, cancel := context.WithCancel(ctx)
		done := make(chan struct{})
		go func() { defer close(done); fwd.serve(fctx) }()
		undo = append(undo, func() error { cancel(); <-done; return nil })
	}
	if n.cfg.KubeProxyKubeconfig == "" {
		ok = true
		close(n.servicesUp)
		return stop, nil
	}
	if _, err := exec.LookPath("nft"); err != nil {
		return nil, fmt.Errorf("node: nft not found (install Debian's nftables; hack/deps.sh does): %w", err)
	}
	// A stale table (an agent that died) would double the rules.
	if err := deleteNftTables(guardTable); err != nil {
		return nil, err
	}
	if err := nft(guardRules()); err != nil {
		return nil, err
	}
	undo = append(undo, func() error { return deleteNftTables(guardTable) })
	if err := os.WriteFile(bridgeForwarding(), []byte("1"), 0o644); err != nil {
		return nil, fmt.Errorf("node: enable forwarding on %s: %w", Bridge, err)
	}
	undo = append(undo, func() error {
		// The bridge goes soon after; a failure here is only logged.
		if err := os.WriteFile(bridgeForwarding(), []byte("0"), 0o644); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("node: disable forwarding on %s: %w", Bridge, err)
		}
		return nil
	})
	kp, err := n.startKubeProxy(ctx)
	if err != nil {
		return nil, err
	}
	undo = append(undo, kp.stop)
	ok = true
	close(n.servicesUp)
	return stop, nil
}

// nft loads a ruleset atomically.
func nft(ruleset string) error {
	cmd := exec.Command("nft", "-f", "-")
	cmd.Stdin = strings.NewReader(ruleset)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("node: nft -f: %w: %s", err, bytes.TrimSpace(out))
	}
	return nil
}

// downServices removes what startServices left when its agent died: the
// tables of kube-proxy and of the guard, and the pods' resolv.conf files.
func downServices() error {
	errs := []error{deleteNftTables(append([]string{guardTable}, kubeProxyTables...)...), removeKubeFirewall(), removeAllResolvConfs()}
	return errors.Join(errs...)
}

// apiServerAddr is where pods reach the API server: the kubernetes
// Service's endpoint, the node's address on the API server's port.
func apiServerAddr(port int) string { return net.JoinHostPort(NodeIP, strconv.Itoa(port)) }
