package origdst_test

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/mesh-dev/mesh/e2e/prereq"
	"github.com/mesh-dev/mesh/internal/accepttest"
	"github.com/mesh-dev/mesh/internal/netnstest"
	"github.com/mesh-dev/mesh/proxy/origdst"
)

// TestGet redirects real connections with iptables and ip6tables in a
// network namespace and checks the original destination Get recovers: the
// address and port the client dialled, for IPv4 and for a link-local IPv6
// address (with the zone the proxy needs to dial it). A connection that was
// not redirected reports the listener's own address, which is how the
// proxy recognises a connection addressed to itself.
func TestGet(t *testing.T) {
	prereq.Root(t)
	a, b := netnstest.New(t, "client"), netnstest.New(t, "server")
	a.NoDAD(t)
	b.NoDAD(t)
	ifA, ifB := netnstest.Link(t, a, b, "198.18.249.1/24", "198.18.249.2/24")
	zoneA, _ := a.LinkLocal(t, ifA)
	zoneB, llB := b.LinkLocal(t, ifB)
	for _, bin := range []string{"iptables", "ip6tables"} {
		b.Run(t, prereq.Command(t, bin), "-t", "nat", "-A", "PREROUTING", "-p", "tcp", "--dport", "8080", "-j", "REDIRECT", "--to-ports", "15006")
	}

	ln, err := b.Listen(context.Background(), "tcp", "[::]:15006")
	if err != nil {
		t.Fatal(err)
	}
	type result struct {
		orig netip.AddrPort
		err  error
	}
	got := make(chan result, 1)
	accepttest.Serve(t, ln, func(c net.Conn) {
		orig, err := origdst.Get(c.(*net.TCPConn))
		got <- result{orig, err}
	})

	ipB := netip.MustParseAddr("198.18.249.2")
	tests := []struct {
		name string
		dial string
		want netip.AddrPort
	}{
		{"IPv4 redirected", "198.18.249.2:8080", netip.AddrPortFrom(ipB, 8080)},
		{"IPv6 link-local redirected", fmt.Sprintf("[%s%%%s]:8080", llB, zoneA), netip.AddrPortFrom(llB.WithZone(zoneB), 8080)},
		{"IPv4 not redirected", "198.18.249.2:15006", netip.AddrPortFrom(ipB, 15006)},
		{"IPv6 not redirected", fmt.Sprintf("[%s%%%s]:15006", llB, zoneA), netip.AddrPortFrom(llB.WithZone(zoneB), 15006)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			c, err := a.Dial(ctx, "tcp", tt.dial)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			select {
			case r := <-got:
				if r.err != nil || r.orig != tt.want {
					t.Fatalf("Get = %v, %v; want %v", r.orig, r.err, tt.want)
				}
			case <-ctx.Done():
				t.Fatal("the listener accepted nothing within 2s")
			}
		})
	}

	// The zoned link-local address Get returns is one B can dial.
	back, err := b.Dial(context.Background(), "tcp", netip.AddrPortFrom(llB.WithZone(zoneB), 15006).String())
	if err != nil {
		t.Fatalf("dial the original destination from B: %v", err)
	}
	back.Close()
	if r := <-got; r.err != nil {
		t.Fatal(r.err)
	}
}
