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
		IPv6:              true,
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
		os.WriteFile(golden, []byte(got), 0o644)
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
		{intercept.Config{InboundPort: 1, OutboundPort: 1}, "must differ"},
		{intercept.Config{InboundPort: 1, OutboundPort: 2, InboundSkipPorts: []int{0}}, "skip port 0 out of range"},
	}
	for _, tt := range tests {
		if err := tt.cfg.Validate(); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("Validate(%+v) = %v, want %q", tt.cfg, err, tt.want)
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
// namespace, with the real iptables of each backend (nft and legacy): the
// second run changes nothing, and the host's rules are untouched.
func TestApplyIdempotent(t *testing.T) {
	for _, backend := range []string{"iptables-nft", "iptables-legacy"} {
		t.Run(backend, func(t *testing.T) { testApplyIdempotent(t, backend) })
	}
}

func testApplyIdempotent(t *testing.T, iptables string) {
	prereq.Root(t)
	bin := prereq.Bin(t, "mesh-proxy")
	save := prereq.Command(t, iptables+"-save")
	prereq.Command(t, iptables+"-restore")
	hostBefore := hostNAT(t)
	ns := netnstest.New(t, "ipt")
	args := []string{bin, "init", "--iptables", iptables, "--proxy-uid", "1337", "--inbound-skip-ports", "9901", "--outbound-skip-cidrs", "198.18.192.0/18"}
	ns.Run(t, args...)
	first := ns.Run(t, save, "-t", "nat")
	ns.Run(t, args...)
	second := ns.Run(t, save, "-t", "nat")
	if stripComments(first) != stripComments(second) {
		t.Fatalf("second init changed the rules:\n%s\n---\n%s", first, second)
	}
	for _, want := range []string{
		"-A PREROUTING -p tcp -j MESH_INBOUND",
		"-A OUTPUT -p tcp -j MESH_OUTBOUND",
		"-A MESH_INBOUND -p tcp -m tcp --dport 9901 -j RETURN",
		"-A MESH_INBOUND -p tcp -j REDIRECT --to-ports 15006",
		"-A MESH_OUTBOUND -m owner --uid-owner 1337 -j RETURN",
		"-A MESH_OUTBOUND -d 198.18.192.0/18 -j RETURN",
		"-A MESH_OUTBOUND -p tcp -j REDIRECT --to-ports 15001",
	} {
		if strings.Count(first, want) != 1 {
			t.Errorf("rule %q appears %d times:\n%s", want, strings.Count(first, want), first)
		}
	}
	if hostNAT(t) != hostBefore {
		t.Fatal("init in a pod namespace changed the host's rules")
	}
}

func hostNAT(t *testing.T) string {
	out, err := exec.Command("iptables-save", "-t", "nat").CombinedOutput()
	if err != nil {
		t.Fatal(err)
	}
	return stripComments(string(out))
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
