package intercept_test

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/mesh-dev/mesh/e2e/prereq"
	"github.com/mesh-dev/mesh/proxy/intercept"
)

// TestIPv6LinkLocal is finding 5: B's app listens on [::]:8080 and A, a peer
// with IPv4 addresses only, reaches it over the link-local address the
// kernel gave B anyway. With init's default (auto) the connection must land
// on the proxy's inbound port or nowhere, never on the app; IPv4 stays
// intercepted and B's own loopback still reaches the app.
func TestIPv6LinkLocal(t *testing.T) {
	tests := []struct {
		name      string
		ip6tables func(t *testing.T) string // zero: the real ip6tables
		want      intercept.IPv6Outcome
		failed    int // fallbacks tried first
	}{
		{name: "nat", want: intercept.IPv6Intercepted},
		{name: "no ip6table_nat: filter drops", ip6tables: noNAT6, want: intercept.IPv6Dropped, failed: 1},
		{name: "no ip6tables: IPv6 disabled", ip6tables: func(t *testing.T) string {
			return filepath.Join(t.TempDir(), "no-such-ip6tables")
		}, want: intercept.IPv6Disabled, failed: 2},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := newPods(t, 251+i)
			app := startApp(t, p.b)
			in := newStandIn(t, p.b, "inbound", inPort)
			out := newStandIn(t, p.b, "outbound", outPort)
			peer := newStandIn(t, p.a, "peer", peerPort)

			// Without rules the app is reachable over IPv6 from A: the
			// bypass this test must catch.
			if got, err := dial(p.a, p.addrB("6", appPort)); err != nil || got != "app" {
				t.Fatalf("before init: dial %s = %q, %v; want the app", p.addrB("6", appPort), got, err)
			}

			cfg := podConfig()
			if tt.ip6tables != nil {
				cfg.IP6Tables = tt.ip6tables(t)
			}
			res, err := apply(p.b, cfg)
			if err != nil {
				t.Fatalf("init: %v", err)
			}
			if res.IPv6 != tt.want || len(res.Failed) != tt.failed {
				t.Fatalf("init: IPv6 %s after %d failures %v, want %s after %d", res.IPv6, len(res.Failed), res.Failed, tt.want, tt.failed)
			}
			if !strings.Contains(res.String(), "IPv6 "+map[bool]string{true: "intercepted", false: "NOT intercepted"}[tt.want == intercept.IPv6Intercepted]) {
				t.Errorf("report does not say what happened to IPv6:\n%s", res)
			}

			// Running init again changes nothing, whichever way IPv6 went.
			before := rulesIn(t, p)
			if res2, err := apply(p.b, cfg); err != nil || res2.IPv6 != tt.want {
				t.Fatalf("second init: %v, %v", res2, err)
			}
			if after := rulesIn(t, p); after != before {
				t.Fatalf("second init changed the rules:\n%s\n---\n%s", before, after)
			}

			seen := len(app.accepted())
			got, err := dial(p.a, p.addrB("6", appPort))
			if tt.want == intercept.IPv6Intercepted {
				if err != nil || got != "inbound" {
					t.Fatalf("IPv6: dial %s = %q, %v; want the inbound port", p.addrB("6", appPort), got, err)
				}
				if l := <-in.lands; l.err != nil || l.orig != p.origB("6", appPort) {
					t.Fatalf("IPv6: original destination %v (%v), want %v", l.orig, l.err, p.origB("6", appPort))
				}
			} else if err == nil {
				t.Fatalf("IPv6: dial %s answered %q; want it blocked", p.addrB("6", appPort), got)
			}

			// IPv4 is intercepted however IPv6 went.
			if got, err := dial(p.a, p.addrB("4", appPort)); err != nil || got != "inbound" {
				t.Fatalf("IPv4: dial = %q, %v; want the inbound port", got, err)
			}
			if l := <-in.lands; l.err != nil || l.orig != p.origB("4", appPort) {
				t.Fatalf("IPv4: original destination %v (%v), want %v", l.orig, l.err, p.origB("4", appPort))
			}

			// Outbound: the app's IPv6 connections never reach the peer.
			// With nat they are redirected, but a socket dialled to a
			// link-local address is bound to its interface, and the kernel
			// cannot route it to the proxy on loopback: the connection
			// goes nowhere (counted by the REDIRECT rule). The proxy's own
			// connections reach the peer.
			outRedirect := fmt.Sprintf("-A MESH_OUTBOUND -p tcp -j REDIRECT --to-ports %d", outPort)
			var outBefore map[string]int
			if tt.want == intercept.IPv6Intercepted {
				outBefore, _ = counters(t, p.b, "ip6tables-save", "MESH_OUTBOUND")
			}
			if got, err := dialAs(t, p.b, appUID, p.addrA("6", peerPort)); err == nil {
				t.Fatalf("IPv6 out: app dial %s answered %q; want it to go nowhere", p.addrA("6", peerPort), got)
			}
			if tt.want == intercept.IPv6Intercepted {
				if after, _ := counters(t, p.b, "ip6tables-save", "MESH_OUTBOUND"); after[outRedirect] <= outBefore[outRedirect] {
					t.Fatalf("IPv6 out: the app's connection was not redirected: %v -> %v", outBefore, after)
				}
				if got, err := dialAs(t, p.b, proxyUID, p.addrA("6", peerPort)); err != nil || got != "peer" {
					t.Fatalf("IPv6 out: proxy dial %s = %q, %v; want the peer", p.addrA("6", peerPort), got, err)
				}
				<-peer.lands
			}
			if got, err := dialAs(t, p.b, appUID, p.addrA("4", peerPort)); err != nil || got != "outbound" {
				t.Fatalf("IPv4 out: app dial = %q, %v; want the outbound port", got, err)
			}
			<-out.lands
			select {
			case l := <-peer.lands:
				t.Fatalf("the peer was reached around the proxy: %+v", l)
			default:
			}

			// B's loopback still reaches the app, and it is the only
			// connection the app saw since init: the app accepts in order,
			// so a connection that got through above would show first.
			if got, err := dial(p.b, "[::1]:8080"); err != nil || got != "app" {
				t.Fatalf("loopback: dial [::1]:8080 = %q, %v; want the app", got, err)
			}
			if acc := app.acceptedAfter(t, seen); len(acc) != 1 || !strings.HasPrefix(acc[0], "[::1]:") {
				t.Fatalf("app accepted %v since init, want only the loopback connection", acc)
			}
		})
	}
}

// rulesIn is everything init can have changed in B: both families' nat
// and filter tables, and IPv6's state per interface.
func rulesIn(t *testing.T, p *pods) string {
	t.Helper()
	var b strings.Builder
	for _, bin := range []string{"iptables-save", "ip6tables-save"} {
		for _, table := range []string{"nat", "filter"} {
			b.WriteString(save(t, p.b, bin, table))
		}
	}
	b.WriteString(p.b.Run(t, "sh", "-c", "grep -H . /proc/sys/net/ipv6/conf/*/disable_ipv6"))
	return b.String()
}

// TestIPv6FailClosed: when IPv6 can be neither intercepted nor blocked, or
// mode "on" cannot intercept it, init fails (the pod does not start) and
// says why; where the namespace has no IPv6 there is nothing to block.
func TestIPv6FailClosed(t *testing.T) {
	prereq.Root(t)
	missing := func(t *testing.T) string { return filepath.Join(t.TempDir(), "no-such-ip6tables") }
	// fakeProc is a procfs whose IPv6 parts are files the test writes.
	fakeProc := func(files map[string]string) func(t *testing.T) string {
		return func(t *testing.T) string {
			dir := t.TempDir()
			for name, body := range files {
				p := filepath.Join(dir, name)
				if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
					t.Fatal(err)
				}
				if body != "" {
					if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
						t.Fatal(err)
					}
				}
			}
			return dir
		}
	}
	tests := []struct {
		name      string
		mode      intercept.IPv6Mode
		ip6tables func(t *testing.T) string
		proc      func(t *testing.T) string // zero: the real /proc
		want      intercept.IPv6Outcome     // zero: init fails
		wantErr   []string
	}{
		{
			name: "on: no nat table, no fallback", mode: intercept.IPv6On, ip6tables: noNAT6,
			wantErr: []string{"intercept: ipv6 mode on, but the IPv6 rules cannot be installed: ", "-restore --noflush (table nat)", "unable to initialize table 'nat'"},
		},
		{
			name: "on: no IPv6 in the namespace", mode: intercept.IPv6On,
			proc:    fakeProc(map[string]string{"sys/net/core/x": ""}),
			wantErr: []string{"intercept: ipv6 mode on, but the namespace has no IPv6"},
		},
		{
			name: "auto: no IPv6 in the namespace", ip6tables: missing,
			proc: fakeProc(map[string]string{"sys/net/core/x": ""}),
			want: intercept.IPv6Absent,
		},
		{
			name: "auto: nothing works", ip6tables: missing,
			// IPv6 present, but its sysctls cannot be listed.
			proc: fakeProc(map[string]string{"sys/net/ipv6/x": ""}),
			wantErr: []string{
				"intercept: IPv6 is neither intercepted nor blocked",
				"no-such-ip6tables-restore --noflush (table nat)",
				"no-such-ip6tables-restore --noflush (table filter)",
				"intercept: disable IPv6: open ",
			},
		},
		{
			name: "auto: disabled, but an interface keeps IPv6", ip6tables: missing,
			proc: fakeProc(map[string]string{
				"sys/net/ipv6/conf/default/disable_ipv6": "0",
				"sys/net/ipv6/conf/eth0/disable_ipv6":    "0",
				"thread-self/net/if_inet6": "fe800000000000000000000000000001 02 40 20 80     eth0\n" +
					"00000000000000000000000000000001 01 80 10 80       lo\n",
			}),
			wantErr: []string{"intercept: disable IPv6: interfaces eth0 still have IPv6 addresses"},
		},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := newPods(t, 240+i)
			cfg := podConfig()
			cfg.IPv6 = tt.mode
			if tt.ip6tables != nil {
				cfg.IP6Tables = tt.ip6tables(t)
			}
			if tt.proc != nil {
				cfg.Proc = tt.proc(t)
			}
			res, err := apply(p.b, cfg)
			if tt.want != "" {
				if err != nil || res.IPv6 != tt.want {
					t.Fatalf("init = %v, %v; want IPv6 %s", res, err, tt.want)
				}
				return
			}
			if err == nil {
				t.Fatalf("init succeeded (%v); want it to fail", res)
			}
			for _, w := range tt.wantErr {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q\ndoes not say %q", err, w)
				}
			}
			// Mode on tries no fallback: it fails instead.
			if tt.mode == intercept.IPv6On {
				if f := save(t, p.b, "ip6tables-save", "filter"); strings.Contains(f, intercept.DropInboundChain) {
					t.Errorf("mode on installed the drop fallback:\n%s", f)
				}
			}
		})
	}
}

// TestPlanIPv6 checks that --dry-run lists the IPv6 fallbacks in the order
// Apply tries them, and none in mode on.
func TestPlanIPv6(t *testing.T) {
	tests := []struct {
		mode intercept.IPv6Mode
		want []string // in this order
		not  []string
	}{
		{intercept.IPv6Auto, []string{
			"# iptables-restore --noflush",
			"# IPv6 (mode auto)",
			"# ip6tables-restore --noflush <<EOF\n*nat",
			"*filter",
			"-I INPUT 1 -p tcp -j MESH_DROP_INBOUND",
			"disable_ipv6",
			"# if that fails: init fails",
		}, nil},
		{intercept.IPv6On, []string{
			"# iptables-restore --noflush",
			"# IPv6 (mode on)",
			"# ip6tables-restore --noflush <<EOF\n*nat",
			"# if that fails, or the namespace has no IPv6: init fails",
		}, []string{"*filter", "disable_ipv6"}},
	}
	for _, tt := range tests {
		cfg := podConfig()
		cfg.IPv6 = tt.mode
		plan, err := cfg.Plan()
		if err != nil {
			t.Fatal(err)
		}
		rest := plan
		for _, w := range tt.want {
			i := strings.Index(rest, w)
			if i < 0 {
				t.Fatalf("mode %s: plan lacks %q after the previous step:\n%s", tt.mode, w, plan)
			}
			rest = rest[i+len(w):]
		}
		for _, n := range tt.not {
			if strings.Contains(plan, n) {
				t.Errorf("mode %s: plan has %q:\n%s", tt.mode, n, plan)
			}
		}
	}
}
