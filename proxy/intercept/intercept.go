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
package intercept

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os/exec"
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
	// IPv6 also installs the rules with ip6tables.
	IPv6 bool
	// IPTables is the iptables binary ("iptables", "iptables-legacy",
	// "iptables-nft"). Zero means "iptables". Its -restore and ip6tables
	// siblings are derived from it.
	IPTables string
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
	return errors.Join(errs...)
}

// family is one IP version's binaries and loopback range.
type family struct {
	iptables, restore string
	loopback          string
	v6                bool
}

func (c *Config) families() []family {
	bin := c.IPTables
	if bin == "" {
		bin = "iptables"
	}
	fams := []family{{iptables: bin, restore: restoreFor(bin), loopback: "127.0.0.0/8"}}
	if c.IPv6 {
		b6 := strings.Replace(bin, "iptables", "ip6tables", 1)
		fams = append(fams, family{iptables: b6, restore: restoreFor(b6), loopback: "::1/128", v6: true})
	}
	return fams
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

// jumps are the rules that send traffic into our chains.
var jumps = [][]string{
	{"PREROUTING", "-p", "tcp", "-j", InboundChain},
	{"OUTPUT", "-p", "tcp", "-j", OutboundChain},
}

// Plan is what Apply does, for --dry-run: per family, the restore input and
// the jump rules.
func (c *Config) Plan() (string, error) {
	if err := c.Validate(); err != nil {
		return "", err
	}
	var b strings.Builder
	for _, f := range c.families() {
		fmt.Fprintf(&b, "# %s --noflush <<EOF\n%sEOF\n", f.restore, c.ruleset(f))
		for _, j := range jumps {
			fmt.Fprintf(&b, "# unless present: %s -t nat -A %s\n", f.iptables, strings.Join(j, " "))
		}
	}
	return b.String(), nil
}

// Apply installs the rules in the current network namespace.
func Apply(ctx context.Context, c *Config) error {
	if err := c.Validate(); err != nil {
		return err
	}
	for _, f := range c.families() {
		cmd := exec.CommandContext(ctx, f.restore, "--noflush")
		cmd.Stdin = strings.NewReader(c.ruleset(f))
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("intercept: %s: %w: %s", f.restore, err, bytes.TrimSpace(out))
		}
		for _, j := range jumps {
			check := append([]string{"-t", "nat", "-C"}, j...)
			if exec.CommandContext(ctx, f.iptables, check...).Run() == nil {
				continue
			}
			add := append([]string{"-t", "nat", "-A"}, j...)
			if out, err := exec.CommandContext(ctx, f.iptables, add...).CombinedOutput(); err != nil {
				return fmt.Errorf("intercept: %s %s: %w: %s", f.iptables, strings.Join(add, " "), err, bytes.TrimSpace(out))
			}
		}
	}
	return nil
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
