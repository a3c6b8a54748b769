package netnstest

import (
	"net"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// NoDAD turns IPv6 duplicate address detection off in n for the interfaces
// made after it (Link's): their link-local addresses are then usable as
// soon as the link is up, rather than a second or more later. A veth pair
// holds no other address to collide with.
func (n *NS) NoDAD(t testing.TB) {
	t.Helper()
	for _, conf := range []string{"all", "default"} {
		p := "/proc/sys/net/ipv6/conf/" + conf + "/accept_dad"
		if err := n.Do(func() error { return os.WriteFile(p, []byte("0"), 0) }); err != nil {
			t.Fatalf("netnstest: %s: %v", n.Name, err)
		}
	}
}

// LinkLocal waits (up to 10s) for the usable IPv6 link-local address the
// kernel gives interface ifName in n, and returns it with the interface's
// index: the zone n dials link-local addresses through ifName with, and
// the zone origdst reports for them.
func (n *NS) LinkLocal(t testing.TB, ifName string) (zone string, addr netip.Addr) {
	t.Helper()
	var ifi *net.Interface
	if err := n.Do(func() (err error) { ifi, err = net.InterfaceByName(ifName); return err }); err != nil {
		t.Fatalf("netnstest: %s: %v", n.Name, err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		out := n.Run(t, "ip", "-6", "-o", "addr", "show", "dev", ifName, "scope", "link")
		for _, l := range strings.Split(out, "\n") {
			// An address still in duplicate address detection cannot be
			// bound or dialled.
			f := strings.Fields(l)
			if len(f) < 4 || f[2] != "inet6" || slices.Contains(f, "tentative") {
				continue
			}
			if p, err := netip.ParsePrefix(f[3]); err == nil && p.Addr().IsLinkLocalUnicast() {
				return strconv.Itoa(ifi.Index), p.Addr()
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("netnstest: %s: no usable link-local address on %s:\n%s", n.Name, ifName, out)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
