package probe

import (
	"context"
	"net"
	"net/netip"
	"testing"
)

// TestDialOnlyTarget: the guard under every probe refuses any address but
// Target's, whatever a redirect or a future code path asks for.
func TestDialOnlyTarget(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	port := ln.Addr().(*net.TCPAddr).Port
	var dialled []string
	h, err := New(Config{Target: netip.MustParseAddr("127.0.0.1"), Dial: func(ctx context.Context, network, addr string) (net.Conn, error) {
		dialled = append(dialled, addr)
		var d net.Dialer
		return d.DialContext(ctx, network, addr)
	}})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		addr string
		ok   bool
	}{
		{netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(port)).String(), true},
		{netip.AddrPortFrom(netip.MustParseAddr("::ffff:127.0.0.1"), uint16(port)).String(), true},
		{"127.0.0.2:80", false},
		{"198.18.0.1:80", false},
		{"localhost:80", false},
		{"[::1]:80", false},
		{"127.0.0.1", false},
		{"", false},
		{"169.254.169.254:80", false},
	}
	for _, tt := range tests {
		t.Run(tt.addr, func(t *testing.T) {
			dialled = nil
			c, err := h.dial(context.Background(), "tcp", tt.addr)
			if c != nil {
				c.Close()
			}
			if (err == nil) != tt.ok {
				t.Fatalf("dial %q: %v, want ok=%v", tt.addr, err, tt.ok)
			}
			if !tt.ok && len(dialled) != 0 {
				t.Fatalf("Config.Dial was called with %q", dialled)
			}
		})
	}
}
