package intercept_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mesh-dev/mesh/e2e/prereq"
	"github.com/mesh-dev/mesh/internal/accepttest"
	"github.com/mesh-dev/mesh/internal/netnstest"
	"github.com/mesh-dev/mesh/proxy/intercept"
	"github.com/mesh-dev/mesh/proxy/origdst"
)

// The pods' ports and the unprivileged user the app runs as.
const (
	appPort  = 8080
	inPort   = 15006
	outPort  = 15001
	proxyUID = 1337
	appUID   = 1000
	peerPort = 9090
)

// roleEnv makes the test binary act as the app (see TestMain).
const roleEnv = "MESH_INTERCEPT_TEST_ROLE"

func TestMain(m *testing.M) {
	var err error
	switch os.Getenv(roleEnv) {
	case "":
		os.Exit(m.Run())
	case "app":
		err = app()
	case "dial":
		err = dialRole(os.Getenv("TARGET"))
	default:
		err = fmt.Errorf("unknown role %q", os.Getenv(roleEnv))
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "app:", err)
		os.Exit(1)
	}
	os.Exit(0)
}

// dialRole connects to target and prints the first line it is sent.
func dialRole(target string) error {
	c, err := net.DialTimeout("tcp", target, time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	fmt.Print(line)
	return err
}

// dialAs connects from ns to addr as uid, in a process of its own, and
// returns the first line it is sent.
func dialAs(t *testing.T, ns *netnstest.NS, uid int, addr string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	cmd := ns.Command(ctx, uid, netnstest.SelfCopy(t), "-test.run=^$")
	cmd.Env = append(os.Environ(), roleEnv+"=dial", "TARGET="+addr)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("%w: %s", err, stderr.String())
	}
	return strings.TrimSpace(string(out)), nil
}

// app listens on [::]:8080 (both families), answers each connection with
// "app" and prints "accepted <remote address>" for it, until killed.
func app() error {
	ln, err := net.Listen("tcp", fmt.Sprintf("[::]:%d", appPort))
	if err != nil {
		return err
	}
	fmt.Println("listening")
	for {
		c, err := ln.Accept()
		if err != nil {
			return err
		}
		fmt.Printf("accepted %s\n", c.RemoteAddr())
		fmt.Fprintln(c, "app")
		c.Close()
	}
}

// pods is two network namespaces, A (a peer) and B (the meshed pod),
// joined by a veth pair with IPv4 addresses only: IPv6 has nothing but the
// link-local addresses the kernel gives both ends.
type pods struct {
	a, b     *netnstest.NS
	ipA, ipB netip.Addr
	llA, llB netip.Addr // link-local addresses
	zoneA    string     // A's interface index: the zone to reach llB
	zoneB    string     // B's interface index: the zone to reach llA
}

// newPods makes the two namespaces on 198.18.<subnet>.0/24.
func newPods(t *testing.T, subnet int) *pods {
	t.Helper()
	prereq.Root(t)
	a, b := netnstest.New(t, "peer"), netnstest.New(t, "pod")
	a.NoDAD(t)
	b.NoDAD(t)
	p := &pods{a: a, b: b,
		ipA: netip.MustParseAddr(fmt.Sprintf("198.18.%d.1", subnet)),
		ipB: netip.MustParseAddr(fmt.Sprintf("198.18.%d.2", subnet)),
	}
	ifA, ifB := netnstest.Link(t, a, b, p.ipA.String()+"/24", p.ipB.String()+"/24")
	p.zoneA, p.llA = a.LinkLocal(t, ifA)
	p.zoneB, p.llB = b.LinkLocal(t, ifB)
	return p
}

// addrA is A's address of the given family ("4" or "6") at port, dialled
// from B: the link-local one for IPv6, with B's zone.
func (p *pods) addrA(family string, port int) string {
	return pick(family, p.ipA, p.llA.WithZone(p.zoneB), port).String()
}

// addrB is B's address of the given family at port, dialled from A: the
// link-local one for IPv6, with A's zone.
func (p *pods) addrB(family string, port int) string {
	return pick(family, p.ipB, p.llB.WithZone(p.zoneA), port).String()
}

// origB is what origdst.Get reports in B for a connection to addrB: the
// same address, but for IPv6 with B's zone, the interface it arrived on.
func (p *pods) origB(family string, port int) netip.AddrPort {
	return pick(family, p.ipB, p.llB.WithZone(p.zoneB), port)
}

// pick is v4, or v6 for family "6", at port.
func pick(family string, v4, v6 netip.Addr, port int) netip.AddrPort {
	if family == "6" {
		return netip.AddrPortFrom(v6, uint16(port))
	}
	return netip.AddrPortFrom(v4, uint16(port))
}

// apply runs intercept.Apply in ns, as mesh-proxy init does in a pod.
func apply(ns *netnstest.NS, cfg intercept.Config) (res *intercept.Result, err error) {
	derr := ns.Do(func() error {
		res, err = intercept.Apply(context.Background(), &cfg)
		return nil
	})
	return res, errors.Join(err, derr)
}

// podConfig is the configuration init uses in the tests' pods.
func podConfig() intercept.Config {
	return intercept.Config{ProxyUID: proxyUID, InboundPort: inPort, OutboundPort: outPort, AdminPort: 15020}
}

// landing is one connection a stand-in listener accepted: where it was
// originally going.
type landing struct {
	orig netip.AddrPort
	err  error
}

// standIn listens on [::]:port in ns (both families) in place of a proxy
// listener: it answers each connection with its name and reports where the
// connection was originally going.
type standIn struct {
	name  string
	lands chan landing
}

func newStandIn(t *testing.T, ns *netnstest.NS, name string, port int) *standIn {
	t.Helper()
	ln, err := ns.Listen(context.Background(), "tcp", fmt.Sprintf("[::]:%d", port))
	if err != nil {
		t.Fatal(err)
	}
	s := &standIn{name: name, lands: make(chan landing, 16)}
	accepttest.Serve(t, ln, func(c net.Conn) {
		orig, err := origdst.Get(c.(*net.TCPConn))
		fmt.Fprintln(c, name)
		select {
		case s.lands <- landing{orig: orig, err: err}:
		default:
			t.Errorf("stand-in %s: more connections than the test made", name)
		}
	})
	return s
}

// dial connects from ns to addr and returns the first line it is sent, or
// an error if nothing answers within a second.
func dial(ns *netnstest.NS, addr string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	c, err := ns.Dial(ctx, "tcp", addr)
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	return strings.TrimSpace(line), err
}

// appProc is the app process in B, and the lines it printed.
type appProc struct {
	mu    sync.Mutex
	lines []string
}

func (a *appProc) Write(b []byte) (int, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, l := range strings.Split(strings.TrimRight(string(b), "\n"), "\n") {
		a.lines = append(a.lines, l)
	}
	return len(b), nil
}

// accepted is the remote addresses of the connections the app accepted.
func (a *appProc) accepted() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	var out []string
	for _, l := range a.lines {
		if r, ok := strings.CutPrefix(l, "accepted "); ok {
			out = append(out, r)
		}
	}
	return out
}

// startApp runs the app in ns as an unprivileged user, as a pod's
// container would run.
func startApp(t *testing.T, ns *netnstest.NS) *appProc {
	t.Helper()
	prereq.Command(t, "setpriv")
	ctx, cancel := context.WithCancel(context.Background())
	cmd := ns.Command(ctx, appUID, netnstest.SelfCopy(t), "-test.run=^$")
	cmd.Env = append(os.Environ(), roleEnv+"=app")
	a := &appProc{}
	cmd.Stdout, cmd.Stderr = a, a
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cancel(); _ = cmd.Wait() })
	deadline := time.Now().Add(10 * time.Second)
	for {
		a.mu.Lock()
		up := len(a.lines) > 0
		a.mu.Unlock()
		if up {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("app did not start listening within 10s")
		}
		time.Sleep(20 * time.Millisecond)
	}
	a.mu.Lock()
	first := a.lines[0]
	a.mu.Unlock()
	if first != "listening" {
		t.Fatalf("app: %s", first)
	}
	return a
}

// acceptedAfter waits (bounded) until the app has reported more than n
// connections and returns those after the first n. The app reports in the
// order it accepts, so when a connection shows, every earlier one has.
func (a *appProc) acceptedAfter(t *testing.T, n int) []string {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		if acc := a.accepted(); len(acc) > n {
			return acc[n:]
		}
		if time.Now().After(deadline) {
			t.Fatalf("the app reported no connection after its %d-th within 5s", n)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// noNAT6 is an ip6tables whose nat table is missing, as on a node without
// ip6table_nat: every command and restore that touches the nat table
// fails; the filter table works (the real ip6tables).
func noNAT6(t *testing.T) string {
	t.Helper()
	real, realRestore := prereq.Command(t, "ip6tables"), prereq.Command(t, "ip6tables-restore")
	dir := t.TempDir()
	bin := filepath.Join(dir, "ip6tables-nonat")
	script := fmt.Sprintf(`#!/bin/sh
for a; do [ "$a" = nat ] && { echo "ip6tables: can't initialize ip6tables table 'nat' (test)" >&2; exit 3; }; done
exec %s "$@"
`, real)
	restore := fmt.Sprintf(`#!/bin/sh
in=$(cat)
case "$in" in *'*nat'*) echo "ip6tables-restore: unable to initialize table 'nat' (test)" >&2; exit 3;; esac
printf '%%s\n' "$in" | exec %s "$@"
`, realRestore)
	for p, s := range map[string]string{bin: script, bin + "-restore": restore} {
		if err := os.WriteFile(p, []byte(s), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return bin
}

// save is iptables-save (or ip6tables-save) of one table in ns, without
// comments and counters.
func save(t *testing.T, ns *netnstest.NS, bin, table string) string {
	t.Helper()
	return stripComments(ns.Run(t, prereq.Command(t, bin), "-t", table))
}

// counters maps each rule of one chain, in ns's nat table, to the packets
// it has matched, and lists the rules in order.
func counters(t *testing.T, ns *netnstest.NS, save, chain string) (map[string]int, []string) {
	t.Helper()
	out := ns.Run(t, prereq.Command(t, save), "-c", "-t", "nat")
	m := map[string]int{}
	var order []string
	for _, l := range strings.Split(out, "\n") {
		cnt, rule, ok := strings.Cut(l, "] ")
		if !ok || !strings.HasPrefix(rule, "-A "+chain+" ") {
			continue
		}
		pkts, _, _ := strings.Cut(strings.TrimPrefix(cnt, "["), ":")
		n, err := strconv.Atoi(pkts)
		if err != nil {
			t.Fatalf("counter in %q: %v", l, err)
		}
		m[rule] = n
		order = append(order, rule)
	}
	return m, order
}
