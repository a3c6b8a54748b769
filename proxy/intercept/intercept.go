// Package intercept installs the iptables rules that send a pod's TCP
// traffic through its proxy: every inbound connection to the proxy's
// inbound port, every outbound connection to its outbound port, except the
// proxy's own traffic, loopback, the admin port and configured skips.
//
// The rules live in the nat table, in chains of our own (MESH_INBOUND,
// MESH_OUTBOUND) jumped to from PREROUTING and OUTPUT. Applying them is
// idempotent: our chains are declared, and so flushed and refilled, in one
// iptables-restore --noflush transaction, and each jump is added only if
// missing. It works with iptables-nft and iptables-legacy alike.
//
// The proxy's own listener ports are never redirected: a connection to
// podIP:15001 or podIP:15006 lands on that listener as addressed, where the
// proxy refuses it, instead of being redirected to the proxy, dialled again
// and redirected again until file descriptors run out.
//
// IPv6 is intercepted the same way whenever the namespace has it, and
// blocked where it cannot be intercepted (see IPv6Mode): an application
// listening on [::] is never reachable around the proxy, not even over the
// link-local addresses every interface has in an IPv4-only cluster.
package intercept

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
)

// Chain names.
const (
	InboundChain  = "MESH_INBOUND"
	OutboundChain = "MESH_OUTBOUND"
)

// Config describes the interception of one pod.
type Config struct {
	// ProxyUID is the UID the proxy runs as; its own connections are never
	// redirected. Required (0 is allowed but means root's traffic escapes).
	ProxyUID int
	// InboundPort and OutboundPort are the proxy's listeners. Required.
	InboundPort, OutboundPort int
	// AdminPort is never intercepted, so probes and scrapes reach it.
	AdminPort int
	// InboundSkipPorts are destination ports delivered to the app directly.
	InboundSkipPorts []int
	// OutboundSkipPorts and OutboundSkipCIDRs are destinations the app
	// reaches directly.
	OutboundSkipPorts []int
	OutboundSkipCIDRs []netip.Prefix
	// IPv6 says what happens to IPv6; zero means IPv6Auto. There is no
	// mode that leaves IPv6 open.
	IPv6 IPv6Mode
	// IPTables is the iptables binary ("iptables", "iptables-legacy",
	// "iptables-nft"). Zero means "iptables". Its -restore sibling is
	// derived from it.
	IPTables string
	// IP6Tables is the ip6tables binary. Zero derives it from IPTables
	// ("iptables-nft" gives "ip6tables-nft"). Its -restore sibling is
	// derived from it.
	IP6Tables string
	// Proc is where procfs is mounted, read to tell whether the namespace
	// has IPv6 and written to disable it. Zero means "/proc".
	Proc string
}

func validPort(p int) bool { return p > 0 && p < 65536 }

// Validate checks the configuration.
func (c *Config) Validate() error {
	var errs []error
	if c.ProxyUID < 0 {
		errs = append(errs, fmt.Errorf("intercept: proxy uid %d is negative", c.ProxyUID))
	}
	for name, p := range map[string]int{"inbound": c.InboundPort, "outbound": c.OutboundPort} {
		if !validPort(p) {
			errs = append(errs, fmt.Errorf("intercept: %s port %d out of range 1-65535", name, p))
		}
	}
	if c.AdminPort != 0 && !validPort(c.AdminPort) {
		errs = append(errs, fmt.Errorf("intercept: admin port %d out of range 1-65535", c.AdminPort))
	}
	for _, p := range append(append([]int(nil), c.InboundSkipPorts...), c.OutboundSkipPorts...) {
		if !validPort(p) {
			errs = append(errs, fmt.Errorf("intercept: skip port %d out of range 1-65535", p))
		}
	}
	if c.InboundPort == c.OutboundPort {
		errs = append(errs, errors.New("intercept: inbound and outbound ports must differ"))
	}
	if c.AdminPort != 0 && (c.AdminPort == c.InboundPort || c.AdminPort == c.OutboundPort) {
		errs = append(errs, fmt.Errorf("intercept: admin port %d is also a proxy listener port", c.AdminPort))
	}
	switch c.IPv6 {
	case "", IPv6Auto, IPv6On:
	default:
		errs = append(errs, fmt.Errorf("intercept: ipv6 mode %q unknown: want %q or %q (IPv6 is intercepted or blocked, never left open)", c.IPv6, IPv6Auto, IPv6On))
	}
	return errors.Join(errs...)
}

// family is one IP version's binaries and loopback range.
type family struct {
	iptables, restore string
	loopback          string
	v6                bool
}

func (c *Config) v4() family {
	bin := c.IPTables
	if bin == "" {
		bin = "iptables"
	}
	return family{iptables: bin, restore: restoreFor(bin), loopback: "127.0.0.0/8"}
}

func (c *Config) v6() family {
	bin := c.IP6Tables
	if bin == "" {
		// Only the file name: a folder named after iptables stays as it is.
		v4 := c.v4().iptables
		bin = filepath.Join(filepath.Dir(v4), strings.Replace(filepath.Base(v4), "iptables", "ip6tables", 1))
	}
	return family{iptables: bin, restore: restoreFor(bin), loopback: "::1/128", v6: true}
}

// restoreFor maps iptables-nft to iptables-nft-restore, and so on.
func restoreFor(bin string) string { return bin + "-restore" }

// Ruleset is the iptables-restore input for one family.
func (c *Config) ruleset(f family) string {
	var b strings.Builder
	w := func(format string, args ...any) { fmt.Fprintf(&b, format+"\n", args...) }
	w("*nat")
	w(":%s - [0:0]", InboundChain)
	w(":%s - [0:0]", OutboundChain)
	// The proxy's listeners are reached as addressed, never redirected:
	// redirecting them is the loop.
	w("-A %s -p tcp --dport %d -j RETURN", InboundChain, c.InboundPort)
	w("-A %s -p tcp --dport %d -j RETURN", InboundChain, c.OutboundPort)
	if c.AdminPort != 0 {
		w("-A %s -p tcp --dport %d -j RETURN", InboundChain, c.AdminPort)
	}
	for _, p := range c.InboundSkipPorts {
		w("-A %s -p tcp --dport %d -j RETURN", InboundChain, p)
	}
	w("-A %s -p tcp -j REDIRECT --to-ports %d", InboundChain, c.InboundPort)

	w("-A %s -o lo -j RETURN", OutboundChain)
	w("-A %s -m owner --uid-owner %d -j RETURN", OutboundChain, c.ProxyUID)
	w("-A %s -d %s -j RETURN", OutboundChain, f.loopback)
	for _, p := range c.OutboundSkipPorts {
		w("-A %s -p tcp --dport %d -j RETURN", OutboundChain, p)
	}
	for _, cidr := range c.OutboundSkipCIDRs {
		if cidr.Addr().Is6() == f.v6 {
			w("-A %s -d %s -j RETURN", OutboundChain, cidr.Masked())
		}
	}
	w("-A %s -p tcp -j REDIRECT --to-ports %d", OutboundChain, c.OutboundPort)
	w("COMMIT")
	return b.String()
}

// natJumps are the rules that send traffic into our nat chains.
var natJumps = []jump{
	{"PREROUTING", []string{"-p", "tcp", "-j", InboundChain}},
	{"OUTPUT", []string{"-p", "tcp", "-j", OutboundChain}},
}

// jump is a rule in a built-in chain that sends traffic to one of ours.
type jump struct {
	chain string
	rule  []string
}

// rules is one iptables-restore transaction and the jumps to add after it,
// appended to their chain, or inserted first when first is set.
type rules struct {
	table string
	input string
	jumps []jump
	first bool
}

func (r rules) plan(b *strings.Builder, f family) {
	fmt.Fprintf(b, "# %s --noflush <<EOF\n%sEOF\n", f.restore, r.input)
	for _, j := range r.jumps {
		fmt.Fprintf(b, "# unless present: %s\n", strings.Join(r.add(f, j), " "))
	}
}

func (r rules) add(f family, j jump) []string {
	args := []string{f.iptables, "-t", r.table, "-A", j.chain}
	if r.first {
		args = []string{f.iptables, "-t", r.table, "-I", j.chain, "1"}
	}
	return append(args, j.rule...)
}

// apply installs r with f's binaries: the restore, then each missing jump.
func (r rules) apply(ctx context.Context, f family) error {
	cmd := exec.CommandContext(ctx, f.restore, "--noflush")
	cmd.Stdin = strings.NewReader(r.input)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("intercept: %s --noflush (table %s): %w: %s", f.restore, r.table, err, bytes.TrimSpace(out))
	}
	for _, j := range r.jumps {
		check := append([]string{"-t", r.table, "-C", j.chain}, j.rule...)
		if exec.CommandContext(ctx, f.iptables, check...).Run() == nil {
			continue
		}
		add := r.add(f, j)
		if out, err := exec.CommandContext(ctx, add[0], add[1:]...).CombinedOutput(); err != nil {
			return fmt.Errorf("intercept: %s: %w: %s", strings.Join(add, " "), err, bytes.TrimSpace(out))
		}
	}
	return nil
}

func (c *Config) nat(f family) rules {
	return rules{table: "nat", input: c.ruleset(f), jumps: natJumps}
}

// Plan is what Apply does, for --dry-run: the IPv4 rules, then the IPv6
// rules and, in order, the fallbacks tried if they cannot be installed.
func (c *Config) Plan() (string, error) {
	if err := c.Validate(); err != nil {
		return "", err
	}
	var b strings.Builder
	c.nat(c.v4()).plan(&b, c.v4())
	c.planIPv6(&b)
	return b.String(), nil
}

// Apply installs the rules in the current network namespace (that of the
// calling thread). The IPv4 rules are required. For IPv6 it does what
// c.IPv6 says and reports which outcome it reached; when IPv6 is neither
// intercepted nor blocked it returns an error, so the init container fails
// and the pod does not start.
func Apply(ctx context.Context, c *Config) (*Result, error) {
	if err := c.Validate(); err != nil {
		return nil, err
	}
	if err := c.nat(c.v4()).apply(ctx, c.v4()); err != nil {
		return nil, err
	}
	return c.applyIPv6(ctx)
}

// ParsePorts parses a comma-separated list of ports ("15020,9090").
func ParsePorts(s string) ([]int, error) {
	var out []int
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		if f == "" {
			continue
		}
		p, err := strconv.Atoi(f)
		if err != nil || !validPort(p) {
			return nil, fmt.Errorf("intercept: %q is not a port (1-65535)", f)
		}
		out = append(out, p)
	}
	return out, nil
}

// ParseCIDRs parses a comma-separated list of CIDRs.
func ParseCIDRs(s string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		if f == "" {
			continue
		}
		p, err := netip.ParsePrefix(f)
		if err != nil {
			return nil, fmt.Errorf("intercept: %q is not a CIDR: %w", f, err)
		}
		out = append(out, p)
	}
	return out, nil
}
