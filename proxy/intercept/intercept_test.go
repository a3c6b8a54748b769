package intercept_test

import (
	"flag"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/mesh-dev/mesh/e2e/prereq"
	"github.com/mesh-dev/mesh/internal/netnstest"
	"github.com/mesh-dev/mesh/proxy/intercept"
)

var update = flag.Bool("update", false, "rewrite the golden files")

func full() *intercept.Config {
	return &intercept.Config{
		ProxyUID: 1337, InboundPort: 15006, OutboundPort: 15001, AdminPort: 15020,
		InboundSkipPorts:  []int{9901},
		OutboundSkipPorts: []int{53},
		OutboundSkipCIDRs: []netip.Prefix{netip.MustParsePrefix("198.18.192.0/18"), netip.MustParsePrefix("fd00::/8")},
		IPv6:              intercept.IPv6Auto,
	}
}

// TestPlanGolden pins the exact rules --dry-run prints.
func TestPlanGolden(t *testing.T) {
	got, err := full().Plan()
	if err != nil {
		t.Fatal(err)
	}
	golden := filepath.Join("testdata", "plan.golden")
	if *update {
		if err := os.WriteFile(golden, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatal(err)
	}
	if got != string(want) {
		t.Fatalf("plan changed (go test -update to accept):\n%s", got)
	}
}

func TestValidate(t *testing.T) {
	tests := []struct {
		cfg  intercept.Config
		want string
	}{
		{intercept.Config{ProxyUID: -1, InboundPort: 1, OutboundPort: 2}, "proxy uid -1 is negative"},
		{intercept.Config{InboundPort: 0, OutboundPort: 2}, "inbound port 0 out of range"},
		{intercept.Config{InboundPort: 1, OutboundPort: 70000}, "outbound port 70000 out of range"},
		{intercept.Config{InboundPort: 1, OutboundPort: 1}, "inbound and outbound ports must differ"},
		{intercept.Config{InboundPort: 1, OutboundPort: 2, InboundSkipPorts: []int{0}}, "skip port 0 out of range"},
		{intercept.Config{InboundPort: 1, OutboundPort: 2, AdminPort: 2}, "admin port 2 is also a proxy listener port"},
		// No mode leaves IPv6 open.
		{intercept.Config{InboundPort: 1, OutboundPort: 2, IPv6: "off"}, `ipv6 mode "off" unknown: want "auto" or "on"`},
		{intercept.Config{InboundPort: 1, OutboundPort: 2, IPv6: "ON"}, `ipv6 mode "ON" unknown`},
	}
	for _, tt := range tests {
		if err := tt.cfg.Validate(); err == nil || !strings.Contains(err.Error(), "intercept: "+tt.want) {
			t.Errorf("Validate(%+v) = %v, want %q", tt.cfg, err, tt.want)
		}
	}
	for _, mode := range []intercept.IPv6Mode{"", intercept.IPv6Auto, intercept.IPv6On} {
		cfg := intercept.Config{InboundPort: 1, OutboundPort: 2, IPv6: mode}
		if err := cfg.Validate(); err != nil {
			t.Errorf("Validate(mode %q) = %v", mode, err)
		}
	}
	if _, err := intercept.ParsePorts("80,x"); err == nil {
		t.Error(`ParsePorts("80,x") accepted`)
	}
	if _, err := intercept.ParseCIDRs("10.0.0.0/33"); err == nil {
		t.Error("ParseCIDRs accepted /33")
	}
}

// TestApplyIdempotent installs the rules twice in a fresh network
// namespace, with the real iptables and ip6tables of each backend (nft and
// legacy), through mesh-proxy init with its defaults: the second run
// changes nothing in either family, and the host's rules are untouched.
func TestApplyIdempotent(t *testing.T) {
	for _, backend := range []string{"iptables-nft", "iptables-legacy"} {
		t.Run(backend, func(t *testing.T) { testApplyIdempotent(t, backend) })
	}
}

func testApplyIdempotent(t *testing.T, iptables string) {
	prereq.Root(t)
	bin := prereq.Bin(t, "mesh-proxy")
	ip6tables := strings.Replace(iptables, "iptables", "ip6tables", 1)
	save, save6 := prereq.Command(t, iptables+"-save"), prereq.Command(t, ip6tables+"-save")
	prereq.Command(t, iptables+"-restore")
	prereq.Command(t, ip6tables+"-restore")
	hostBefore := hostNAT(t)
	ns := netnstest.New(t, "ipt")
	args := []string{bin, "init", "--iptables", iptables, "--proxy-uid", "1337", "--inbound-skip-ports", "9901", "--outbound-skip-cidrs", "198.18.192.0/18,fd00::/8"}
	rules := func() string {
		return ns.Run(t, save, "-t", "nat") + ns.Run(t, save6, "-t", "nat") + ns.Run(t, save6, "-t", "filter")
	}
	if out := ns.Run(t, args...); !strings.Contains(out, "intercept: IPv6 intercepted") {
		t.Fatalf("init does not report IPv6 intercepted:\n%s", out)
	}
	first := rules()
	ns.Run(t, args...)
	second := rules()
	if stripComments(first) != stripComments(second) {
		t.Fatalf("second init changed the rules:\n%s\n---\n%s", first, second)
	}
	common := []string{
		"-A PREROUTING -p tcp -j MESH_INBOUND",
		"-A OUTPUT -p tcp -j MESH_OUTBOUND",
		"-A MESH_INBOUND -p tcp -m tcp --dport 15006 -j RETURN",
		"-A MESH_INBOUND -p tcp -m tcp --dport 15001 -j RETURN",
		"-A MESH_INBOUND -p tcp -m tcp --dport 15020 -j RETURN",
		"-A MESH_INBOUND -p tcp -m tcp --dport 9901 -j RETURN",
		"-A MESH_INBOUND -p tcp -j REDIRECT --to-ports 15006",
		"-A MESH_OUTBOUND -m owner --uid-owner 1337 -j RETURN",
		"-A MESH_OUTBOUND -p tcp -j REDIRECT --to-ports 15001",
	}
	for fam, want := range map[string][]string{
		save:  append(common, "-A MESH_OUTBOUND -d 198.18.192.0/18 -j RETURN"),
		save6: append(common, "-A MESH_OUTBOUND -d fd00::/8 -j RETURN"),
	} {
		got := ns.Run(t, fam, "-t", "nat")
		for _, w := range want {
			if strings.Count(got, w) != 1 {
				t.Errorf("%s: rule %q appears %d times:\n%s", fam, w, strings.Count(got, w), got)
			}
		}
	}
	if hostNAT(t) != hostBefore {
		t.Fatal("init in a pod namespace changed the host's rules")
	}
}

// hostNAT is the host's rules that init must not touch: both families'
// nat tables and IPv6's filter table.
func hostNAT(t *testing.T) string {
	var b strings.Builder
	for _, c := range [][]string{{"iptables-save", "-t", "nat"}, {"ip6tables-save", "-t", "nat"}, {"ip6tables-save", "-t", "filter"}} {
		out, err := exec.Command(c[0], c[1:]...).CombinedOutput()
		if err != nil {
			t.Fatal(err)
		}
		b.WriteString(stripComments(string(out)))
	}
	return b.String()
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

// TestInitFlags runs mesh-proxy init --dry-run with the IPv6 flags: no
// value leaves IPv6 open, a bare --ipv6 keeps its old meaning (required),
// and the ip6tables binary follows --iptables unless --ip6tables names it.
func TestInitFlags(t *testing.T) {
	bin := prereq.Bin(t, "mesh-proxy")
	tests := []struct {
		args []string
		want string // in the plan, or in the error if fail
		fail bool
	}{
		{[]string{}, "# IPv6 (mode auto)", false},
		{[]string{"--ipv6"}, "# IPv6 (mode on)", false},
		{[]string{"--ipv6=on"}, "# IPv6 (mode on)", false},
		{[]string{"--ipv6=off"}, `intercept: ipv6 mode "off" unknown`, true},
		{[]string{"--ipv6="}, "# IPv6 (mode auto)", false},
		{[]string{"--ipv6", "on"}, `init: unexpected argument "on"`, true},
		{[]string{"--iptables", "iptables-legacy"}, "# ip6tables-legacy-restore --noflush <<EOF\n*nat", false},
		{[]string{"--iptables", "/usr/sbin/iptables-nft"}, "# /usr/sbin/ip6tables-nft-restore --noflush <<EOF\n*nat", false},
		{[]string{"--ip6tables", "/opt/ip6"}, "# /opt/ip6-restore --noflush <<EOF\n*filter", false},
	}
	for _, tt := range tests {
		out, err := exec.Command(bin, append([]string{"init", "--dry-run"}, tt.args...)...).CombinedOutput()
		if (err != nil) != tt.fail || !strings.Contains(string(out), tt.want) {
			t.Errorf("init --dry-run %v: %v\n%s\nwant failure=%v and %q", tt.args, err, out, tt.fail, tt.want)
		}
	}
}
