package meshproxy

import (
	"errors"
	"net"
	"net/netip"
	"testing"
)

// TestOutboundListeners: one outbound listener or several, every
// connection accepted is answered with its own listener's destination, and
// Close ends accepting on all of them.
func TestOutboundListeners(t *testing.T) {
	dsts := []netip.AddrPort{netip.MustParseAddrPort("127.0.0.1:19001"), netip.MustParseAddrPort("127.0.0.1:19002"), netip.MustParseAddrPort("127.0.0.1:19003")}
	for _, n := range []int{1, 3} {
		t.Run(map[int]string{1: "one", 3: "three"}[n], func(t *testing.T) {
			cfg := &standalone{}
			for _, d := range dsts[:n] {
				cfg.outbound = append(cfg.outbound, outboundRoute{listen: "127.0.0.1:0", destination: d})
			}
			s := &sockets{cfg: cfg}
			ln, err := s.listen(t.Context(), "tcp", outboundListeners)
			if err != nil {
				t.Fatal(err)
			}
			if len(s.routes) != n {
				t.Fatalf("%d routes, want %d", len(s.routes), n)
			}
			for _, r := range s.routes {
				c, err := net.Dial("tcp", r.local.String())
				if err != nil {
					t.Fatal(err)
				}
				a, err := ln.Accept()
				if err != nil {
					t.Fatal(err)
				}
				got, err := s.originalDst(a.(*net.TCPConn))
				if err != nil || got != r.dst {
					t.Errorf("connection to %s: destination %s (%v), want %s", r.local, got, err, r.dst)
				}
				a.Close()
				c.Close()
			}
			if err := ln.Close(); err != nil {
				t.Fatal(err)
			}
			if _, err := ln.Accept(); !errors.Is(err, net.ErrClosed) {
				t.Fatalf("Accept after Close: %v, want net.ErrClosed", err)
			}
			for _, r := range s.routes {
				if c, err := net.Dial("tcp", r.local.String()); err == nil {
					c.Close()
					t.Errorf("%s still accepts after Close", r.local)
				}
			}
		})
	}
}
