package node

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// The cluster's DNS, as e2e/cluster's CoreDNS add-on serves it.
const (
	// ClusterDNS is the kube-dns Service's ClusterIP.
	ClusterDNS = "198.18.192.10"
	// ClusterDomain is the suffix of Service and pod names.
	ClusterDomain = "cluster.local"
)

// netnsEtc is where `ip netns exec` finds the files it bind-mounts over
// /etc for the programs it runs in a namespace: /etc/netns/<name>/resolv.conf
// becomes their /etc/resolv.conf.
const netnsEtc = "/etc/netns"

// The resolver's limits (resolv.conf(5)); the kubelet applies the same.
const (
	maxNameservers = 3
	maxSearches    = 32
)

// resolvConf renders a pod's resolv.conf for its dnsPolicy and dnsConfig,
// as the kubelet does; "" means the pod keeps the node's. hostResolv is the
// node's resolv.conf, merged under dnsPolicy Default with a dnsConfig.
// Every value is checked, so that nothing in the pod spec can add a line.
func resolvConf(p *corev1.Pod, hostResolv []byte) (string, error) {
	var servers, searches, options []string
	policy := p.Spec.DNSPolicy
	if policy == "" {
		policy = corev1.DNSClusterFirst
	}
	if policy == corev1.DNSClusterFirst && p.Spec.HostNetwork {
		policy = corev1.DNSDefault // as the kubelet does
	}
	switch policy {
	case corev1.DNSClusterFirst, corev1.DNSClusterFirstWithHostNet:
		servers = []string{ClusterDNS}
		searches = []string{p.Namespace + ".svc." + ClusterDomain, "svc." + ClusterDomain, ClusterDomain}
		options = []string{"ndots:5"}
	case corev1.DNSDefault:
		if p.Spec.DNSConfig == nil {
			return "", nil
		}
		servers, searches, options = parseResolvConf(hostResolv)
	case corev1.DNSNone:
		if p.Spec.DNSConfig == nil || len(p.Spec.DNSConfig.Nameservers) == 0 {
			return "", errors.New("node: dnsPolicy None needs dnsConfig.nameservers")
		}
	default:
		return "", fmt.Errorf("node: dnsPolicy %q is not ClusterFirst, ClusterFirstWithHostNet, Default or None", policy)
	}
	if c := p.Spec.DNSConfig; c != nil {
		servers = append(servers, c.Nameservers...)
		searches = append(searches, c.Searches...)
		for _, o := range c.Options {
			// A pod's option replaces the one of the same name.
			options = slices.DeleteFunc(options, func(s string) bool { n, _, _ := strings.Cut(s, ":"); return n == o.Name })
			if o.Value != nil {
				options = append(options, o.Name+":"+*o.Value)
			} else {
				options = append(options, o.Name)
			}
		}
	}
	servers, searches = dedupe(servers), dedupe(searches)
	if len(servers) > maxNameservers {
		servers = servers[:maxNameservers]
	}
	if len(searches) > maxSearches {
		return "", fmt.Errorf("node: %d DNS search domains, at most %d", len(searches), maxSearches)
	}
	var b strings.Builder
	for _, s := range servers {
		if _, err := netip.ParseAddr(s); err != nil {
			return "", fmt.Errorf("node: DNS nameserver %q is not an IP address", s)
		}
		b.WriteString("nameserver " + s + "\n")
	}
	for _, s := range append(searches, options...) {
		if s == "" || strings.ContainsFunc(s, func(r rune) bool { return r <= ' ' || r >= 0x7f || r == '#' || r == ';' }) {
			return "", fmt.Errorf("node: DNS search domain or option %q has a space, control character or comment", s)
		}
	}
	if len(searches) > 0 {
		b.WriteString("search " + strings.Join(searches, " ") + "\n")
	}
	if len(options) > 0 {
		b.WriteString("options " + strings.Join(options, " ") + "\n")
	}
	return b.String(), nil
}

// parseResolvConf reads the nameserver, search and options lines of a
// resolv.conf; the rest is ignored, as the resolver does.
func parseResolvConf(b []byte) (servers, searches, options []string) {
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		switch f[0] {
		case "nameserver":
			servers = append(servers, f[1])
		case "search", "domain":
			searches = f[1:] // the last one wins
		case "options":
			options = append(options, f[1:]...)
		}
	}
	return servers, searches, options
}

func dedupe(in []string) []string {
	var out []string
	for _, s := range in {
		if !slices.Contains(out, s) {
			out = append(out, s)
		}
	}
	return out
}

// writeResolvConf gives the pod's programs their resolv.conf (or none, to
// keep the node's).
func writeResolvConf(p *corev1.Pod, netns string) error {
	host, _ := os.ReadFile("/etc/resolv.conf")
	conf, err := resolvConf(p, host)
	if err != nil {
		return err
	}
	dir := filepath.Join(netnsEtc, netns)
	if conf == "" {
		return removeResolvConf(netns)
	}
	if filepath.Base(dir) != netns {
		return fmt.Errorf("node: network namespace name %q is not a file name", netns)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("node: resolv.conf: %w", err)
	}
	if err := os.WriteFile(filepath.Join(dir, "resolv.conf"), []byte(conf), 0o644); err != nil {
		return fmt.Errorf("node: resolv.conf: %w", err)
	}
	return nil
}

// removeResolvConf removes what writeResolvConf wrote for a namespace.
func removeResolvConf(netns string) error {
	dir := filepath.Join(netnsEtc, netns)
	if filepath.Base(dir) != netns || !strings.HasPrefix(netns, "pod-") {
		return nil
	}
	if err := os.RemoveAll(dir); err != nil {
		return fmt.Errorf("node: remove %s: %w", dir, err)
	}
	return nil
}

// removeAllResolvConfs removes every pod's, for Down.
func removeAllResolvConfs() error {
	ents, err := os.ReadDir(netnsEtc)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("node: %w", err)
	}
	var errs []error
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), "pod-") {
			errs = append(errs, removeResolvConf(e.Name()))
		}
	}
	return errors.Join(errs...)
}

// serviceEnv is the Services' environment the kubelet gives a container:
// the kubernetes Service's always (rest.InClusterConfig reads
// KUBERNETES_SERVICE_HOST and _PORT), and with enableServiceLinks (the
// default) every Service of the pod's namespace.
func (n *Node) serviceEnv(ctx context.Context, p *corev1.Pod) ([]string, error) {
	var svcs []corev1.Service
	if p.Spec.EnableServiceLinks == nil || *p.Spec.EnableServiceLinks {
		l, err := n.cfg.Kube.CoreV1().Services(p.Namespace).List(ctx, metav1.ListOptions{})
		if err != nil {
			return nil, fmt.Errorf("node: services of %s: %w", p.Namespace, err)
		}
		svcs = l.Items
	}
	if k, err := n.cfg.Kube.CoreV1().Services(metav1.NamespaceDefault).Get(ctx, "kubernetes", metav1.GetOptions{}); err == nil {
		svcs = append(svcs, *k)
	}
	return serviceEnvVars(svcs), nil
}

// serviceEnvVars renders Services as the kubelet does (its envvars
// package): NAME_SERVICE_HOST, NAME_SERVICE_PORT[_PORTNAME] and the
// Docker link variables. A name seen twice keeps its first Service.
func serviceEnvVars(svcs []corev1.Service) []string {
	seen := map[string]bool{}
	var out []string
	for _, s := range svcs {
		ip := s.Spec.ClusterIP
		if ip == "" || ip == corev1.ClusterIPNone || len(s.Spec.Ports) == 0 || seen[s.Name] {
			continue
		}
		seen[s.Name] = true
		prefix := envName(s.Name)
		out = append(out, prefix+"_SERVICE_HOST="+ip, prefix+"_SERVICE_PORT="+strconv.Itoa(int(s.Spec.Ports[0].Port)))
		for _, sp := range s.Spec.Ports {
			if sp.Name != "" {
				out = append(out, prefix+"_SERVICE_PORT_"+envName(sp.Name)+"="+strconv.Itoa(int(sp.Port)))
			}
		}
		for i, sp := range s.Spec.Ports {
			proto := strings.ToLower(string(sp.Protocol))
			if proto == "" {
				proto = "tcp"
			}
			url := proto + "://" + net.JoinHostPort(ip, strconv.Itoa(int(sp.Port)))
			if i == 0 {
				out = append(out, prefix+"_PORT="+url)
			}
			pp := fmt.Sprintf("%s_PORT_%d_%s", prefix, sp.Port, strings.ToUpper(proto))
			out = append(out, pp+"="+url, pp+"_PROTO="+proto, pp+"_PORT="+strconv.Itoa(int(sp.Port)), pp+"_ADDR="+ip)
		}
	}
	return out
}

func envName(s string) string { return strings.ToUpper(strings.ReplaceAll(s, "-", "_")) }
