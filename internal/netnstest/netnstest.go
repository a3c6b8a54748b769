// Package netnstest gives tests network namespaces of their own: made with
// `ip netns add`, linked by veth pairs inside 198.18.0.0/16 with nothing in
// the host namespace, and removed when the test ends. The kernel also gives
// each veth end an IPv6 link-local address (LinkLocal), reachable only
// across that one link.
package netnstest

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/vishvananda/netns"

	"github.com/mesh-dev/mesh/e2e/prereq"
)

// NS is a network namespace, visible to `ip netns` by Name.
type NS struct {
	Name string
	h    netns.NsHandle
}

var seq atomic.Int64

// New creates a namespace with loopback up. Its name is unique to the test
// process.
func New(t testing.TB, label string) *NS {
	t.Helper()
	prereq.Root(t)
	prereq.Command(t, "ip")
	name := fmt.Sprintf("mesh-t%d-%d-%s", os.Getpid(), seq.Add(1), label)
	run(t, "ip", "netns", "add", name)
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", name).Run() })
	h, err := netns.GetFromName(name)
	if err != nil {
		t.Fatalf("netnstest: open %s: %v", name, err)
	}
	t.Cleanup(func() { h.Close() })
	n := &NS{Name: name, h: h}
	n.Run(t, "ip", "link", "set", "lo", "up")
	return n
}

// Link joins a and b with a veth pair, addressing a's end with addrA and
// b's with addrB (CIDR notation, inside 198.18.0.0/16). It returns the
// interface names in a and b.
func Link(t testing.TB, a, b *NS, addrA, addrB string) (string, string) {
	t.Helper()
	n := seq.Add(1)
	ifA, ifB := fmt.Sprintf("mva%d", n), fmt.Sprintf("mvb%d", n)
	run(t, "ip", "link", "add", ifA, "netns", a.Name, "type", "veth", "peer", "name", ifB, "netns", b.Name)
	a.Run(t, "ip", "addr", "add", addrA, "dev", ifA)
	b.Run(t, "ip", "addr", "add", addrB, "dev", ifB)
	a.Run(t, "ip", "link", "set", ifA, "up")
	b.Run(t, "ip", "link", "set", ifB, "up")
	return ifA, ifB
}

// Run runs a command in the namespace and fails the test if it fails.
func (n *NS) Run(t testing.TB, args ...string) string {
	t.Helper()
	return run(t, append([]string{"ip", "netns", "exec", n.Name}, args...)...)
}

// Command returns a command that runs in the namespace as uid (and gid)
// with no supplementary groups, as an application in a pod would.
func (n *NS) Command(ctx context.Context, uid int, name string, args ...string) *exec.Cmd {
	id := fmt.Sprint(uid)
	full := append([]string{"netns", "exec", n.Name, "setpriv", "--reuid", id, "--regid", id, "--clear-groups", "--", name}, args...)
	return exec.CommandContext(ctx, "ip", full...)
}

// Do runs f on an OS thread switched into the namespace: sockets f creates
// stay in the namespace for their whole life.
func (n *NS) Do(f func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			errc <- err
			return
		}
		defer orig.Close()
		if err := netns.Set(n.h); err != nil {
			errc <- err
			return
		}
		ferr := f()
		if err := netns.Set(orig); err != nil {
			// Leave the thread locked: it dies with this goroutine rather
			// than serve others from the wrong namespace.
			errc <- fmt.Errorf("netnstest: switch back: %w", err)
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}

// Listen opens a listener inside the namespace.
func (n *NS) Listen(ctx context.Context, network, addr string) (net.Listener, error) {
	var ln net.Listener
	err := n.Do(func() (err error) {
		var lc net.ListenConfig
		ln, err = lc.Listen(ctx, network, addr)
		return err
	})
	return ln, err
}

// Dial connects from inside the namespace.
func (n *NS) Dial(ctx context.Context, network, addr string) (net.Conn, error) {
	var c net.Conn
	err := n.Do(func() (err error) {
		var d net.Dialer
		c, err = d.DialContext(ctx, network, addr)
		return err
	})
	return c, err
}

func run(t testing.TB, args ...string) string {
	t.Helper()
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}
