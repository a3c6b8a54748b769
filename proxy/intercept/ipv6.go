package intercept

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// IPv6Mode says how init treats IPv6. No mode leaves it open: a kernel with
// IPv6 gives every interface a link-local address, even in an IPv4-only
// cluster, and an application listening on [::] would answer there in
// plaintext, with no policy.
type IPv6Mode string

const (
	// IPv6Auto, the default, installs the IPv6 rules whenever the namespace
	// has IPv6. Where they cannot be installed (no ip6tables, no
	// ip6table_nat), it blocks IPv6 instead: first by dropping every
	// non-loopback IPv6 TCP connection in the filter table, else by
	// disabling IPv6 on every interface but loopback. If both fail, Apply
	// fails.
	IPv6Auto IPv6Mode = "auto"
	// IPv6On requires the IPv6 rules: Apply fails if the namespace has no
	// IPv6 or the rules cannot be installed, and tries no fallback.
	IPv6On IPv6Mode = "on"
)

// IPv6Outcome is what Apply did about IPv6.
type IPv6Outcome string

const (
	// IPv6Intercepted: the same nat rules as for IPv4.
	IPv6Intercepted IPv6Outcome = "intercepted"
	// IPv6Dropped: filter rules drop every IPv6 TCP connection that is not
	// on loopback, in and out. The proxy serves IPv4 only.
	IPv6Dropped IPv6Outcome = "dropped"
	// IPv6Disabled: IPv6 is disabled on every interface but loopback, and
	// by default on interfaces added later.
	IPv6Disabled IPv6Outcome = "disabled"
	// IPv6Absent: the kernel has no IPv6 in this namespace; nothing to do.
	IPv6Absent IPv6Outcome = "absent"
)

// Result is what Apply did. IPv4 is always intercepted when Apply succeeds.
type Result struct {
	IPv6 IPv6Outcome
	// Failed holds the IPv6 attempts that failed before the one that
	// worked, so the init container's log says why IPv6 is blocked rather
	// than intercepted.
	Failed []error
}

// String is the report init prints.
func (r *Result) String() string {
	var b strings.Builder
	b.WriteString("intercept: IPv4 intercepted\n")
	switch r.IPv6 {
	case IPv6Intercepted:
		b.WriteString("intercept: IPv6 intercepted\n")
	case IPv6Dropped:
		b.WriteString("intercept: IPv6 NOT intercepted: every non-loopback IPv6 TCP connection is dropped (filter table)\n")
	case IPv6Disabled:
		b.WriteString("intercept: IPv6 NOT intercepted: IPv6 disabled on every interface but lo\n")
	case IPv6Absent:
		b.WriteString("intercept: IPv6 absent from this network namespace; nothing to intercept\n")
	}
	for _, err := range r.Failed {
		fmt.Fprintf(&b, "intercept: tried first: %v\n", err)
	}
	return b.String()
}

// Chains of the drop fallback, in the filter table.
const (
	DropInboundChain  = "MESH_DROP_INBOUND"
	DropOutboundChain = "MESH_DROP_OUTBOUND"
)

// dropRules drop all IPv6 TCP but loopback's. The jumps go first in INPUT
// and OUTPUT so that no ACCEPT already there lets a connection past.
func dropRules() rules {
	var b strings.Builder
	w := func(format string, args ...any) { fmt.Fprintf(&b, format+"\n", args...) }
	w("*filter")
	w(":%s - [0:0]", DropInboundChain)
	w(":%s - [0:0]", DropOutboundChain)
	w("-A %s -i lo -j RETURN", DropInboundChain)
	w("-A %s -j DROP", DropInboundChain)
	w("-A %s -o lo -j RETURN", DropOutboundChain)
	w("-A %s -j DROP", DropOutboundChain)
	w("COMMIT")
	return rules{
		table: "filter",
		input: b.String(),
		jumps: []jump{
			{"INPUT", []string{"-p", "tcp", "-j", DropInboundChain}},
			{"OUTPUT", []string{"-p", "tcp", "-j", DropOutboundChain}},
		},
		first: true,
	}
}

func (c *Config) proc() string {
	if c.Proc == "" {
		return "/proc"
	}
	return c.Proc
}

// inet6Path lists the namespace's IPv6 addresses. It is read through
// thread-self because /proc/net follows the process's main thread, not a
// thread switched into another namespace (as tests and in-process callers
// do).
func (c *Config) inet6Path() string { return filepath.Join(c.proc(), "thread-self", "net", "if_inet6") }

// ipv6Sysctls is IPv6's sysctl folder, there when the kernel has IPv6 in
// this namespace.
func (c *Config) ipv6Sysctls() string { return filepath.Join(c.proc(), "sys", "net", "ipv6") }

func (c *Config) confPath() string { return filepath.Join(c.ipv6Sysctls(), "conf") }

// hasIPv6 reports whether the kernel has IPv6 in this namespace. Only
// proof of absence counts: a path that cannot be checked for another
// reason means IPv6 may be there, and is handled.
func (c *Config) hasIPv6() bool {
	for _, p := range []string{c.ipv6Sysctls(), c.inet6Path()} {
		if _, err := os.Stat(p); !errors.Is(err, os.ErrNotExist) {
			return true
		}
	}
	return false
}

func (c *Config) mode() IPv6Mode {
	if c.IPv6 == "" {
		return IPv6Auto
	}
	return c.IPv6
}

func (c *Config) applyIPv6(ctx context.Context) (*Result, error) {
	if !c.hasIPv6() {
		if c.mode() == IPv6On {
			return nil, fmt.Errorf("intercept: ipv6 mode on, but the namespace has no IPv6 (neither %s nor %s exists)", c.ipv6Sysctls(), c.inet6Path())
		}
		return &Result{IPv6: IPv6Absent}, nil
	}
	f := c.v6()
	err := c.nat(f).apply(ctx, f)
	if err == nil {
		return &Result{IPv6: IPv6Intercepted}, nil
	}
	if c.mode() == IPv6On {
		return nil, fmt.Errorf("intercept: ipv6 mode on, but the IPv6 rules cannot be installed: %w", err)
	}
	// Fall back, in order, to the first way of blocking IPv6 that works.
	res := &Result{Failed: []error{err}}
	fallbacks := []struct {
		outcome IPv6Outcome
		block   func() error
	}{
		{IPv6Dropped, func() error { return dropRules().apply(ctx, f) }},
		{IPv6Disabled, c.disableIPv6},
	}
	for _, fb := range fallbacks {
		err := fb.block()
		if err == nil {
			res.IPv6 = fb.outcome
			return res, nil
		}
		res.Failed = append(res.Failed, err)
	}
	return nil, fmt.Errorf("intercept: IPv6 is neither intercepted nor blocked, refusing to leave it open: %w", errors.Join(res.Failed...))
}

// disableIPv6 sets disable_ipv6 on default (first, so an interface added
// meanwhile is covered) and on every interface but lo, then checks that
// only lo keeps IPv6 addresses. "all" is left alone: writing it would
// disable loopback too.
func (c *Config) disableIPv6() error {
	dir := c.confPath()
	entries, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("intercept: disable IPv6: %w", err)
	}
	names := []string{"default"}
	for _, e := range entries {
		if n := e.Name(); n != "all" && n != "default" && n != "lo" {
			names = append(names, n)
		}
	}
	var errs []error
	for _, n := range names {
		p := filepath.Join(dir, n, "disable_ipv6")
		if err := os.WriteFile(p, []byte("1\n"), 0); err != nil {
			errs = append(errs, fmt.Errorf("intercept: disable IPv6: %w", err))
			continue
		}
		if got, err := os.ReadFile(p); err != nil || string(bytes.TrimSpace(got)) != "1" {
			errs = append(errs, fmt.Errorf("intercept: disable IPv6: %s reads %q after writing 1 (%v)", p, bytes.TrimSpace(got), err))
		}
	}
	if len(errs) > 0 {
		return errors.Join(errs...)
	}
	left, err := c.inet6Interfaces()
	if err != nil {
		return err
	}
	if left = slices.DeleteFunc(left, func(n string) bool { return n == "lo" }); len(left) > 0 {
		return fmt.Errorf("intercept: disable IPv6: interfaces %s still have IPv6 addresses", strings.Join(left, ", "))
	}
	return nil
}

// inet6Interfaces lists the interfaces that have an IPv6 address.
func (c *Config) inet6Interfaces() ([]string, error) {
	b, err := os.ReadFile(c.inet6Path())
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil // no IPv6 address anywhere
	}
	if err != nil {
		return nil, fmt.Errorf("intercept: list IPv6 addresses: %w", err)
	}
	var names []string
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		// address ifindex prefixlen scope flags name
		if f := strings.Fields(sc.Text()); len(f) == 6 && !slices.Contains(names, f[5]) {
			names = append(names, f[5])
		}
	}
	return names, nil
}

// planIPv6 writes what applyIPv6 would try, in order.
func (c *Config) planIPv6(b *strings.Builder) {
	fmt.Fprintf(b, "# IPv6 (mode %s), if the namespace has it (%s or %s exists):\n", c.mode(), c.ipv6Sysctls(), c.inet6Path())
	f := c.v6()
	c.nat(f).plan(b, f)
	if c.mode() == IPv6On {
		b.WriteString("# if that fails, or the namespace has no IPv6: init fails\n")
		return
	}
	b.WriteString("# if that fails, drop every non-loopback IPv6 TCP connection:\n")
	dropRules().plan(b, f)
	fmt.Fprintf(b, "# if that fails, disable IPv6: write 1 to %s/{default,<every interface but lo>}/disable_ipv6\n", c.confPath())
	b.WriteString("# if that fails: init fails\n")
}
