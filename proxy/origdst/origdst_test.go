package origdst_test

import (
	"encoding/binary"
	"net/netip"
	"syscall"
	"testing"

	"github.com/mesh-dev/mesh/proxy/origdst"
)

func sockaddr4(ip [4]byte, port uint16) []byte {
	b := make([]byte, 16)
	binary.NativeEndian.PutUint16(b, syscall.AF_INET)
	binary.BigEndian.PutUint16(b[2:], port)
	copy(b[4:], ip[:])
	return b
}

func TestParse(t *testing.T) {
	got, err := origdst.Parse(sockaddr4([4]byte{198, 18, 0, 7}, 8080))
	if err != nil || got != netip.MustParseAddrPort("198.18.0.7:8080") {
		t.Fatalf("Parse = %v, %v", got, err)
	}
	b := make([]byte, 28)
	binary.NativeEndian.PutUint16(b, syscall.AF_INET6)
	binary.BigEndian.PutUint16(b[2:], 443)
	copy(b[8:], netip.MustParseAddr("fd00::1").AsSlice())
	if got, err := origdst.Parse(b); err != nil || got != netip.MustParseAddrPort("[fd00::1]:443") {
		t.Fatalf("Parse v6 = %v, %v", got, err)
	}
	for _, bad := range [][]byte{nil, {1}, sockaddr4([4]byte{}, 1)[:6], {0xff, 0xff, 0, 0}} {
		if _, err := origdst.Parse(bad); err == nil {
			t.Errorf("Parse(% x) accepted", bad)
		}
	}
}

func FuzzParse(f *testing.F) {
	f.Add(sockaddr4([4]byte{198, 18, 0, 7}, 8080))
	f.Add([]byte{})
	f.Add(sockaddr6(netip.MustParseAddr("fe80::1"), 8080, 7))
	f.Add(sockaddr6(netip.MustParseAddr("::ffff:198.18.0.7"), 80, 0xffffffff))
	f.Add(sockaddr6(netip.MustParseAddr("fd00::1"), 0, 0)[:24])
	f.Fuzz(func(t *testing.T, b []byte) {
		ap, err := origdst.Parse(b)
		if err == nil && !ap.IsValid() {
			t.Fatal("invalid address without an error")
		}
		// Whatever Parse returns must survive a round trip through its
		// text form, which is how the proxy dials and logs it.
		if err == nil {
			if back, perr := netip.ParseAddrPort(ap.String()); perr != nil || back != ap {
				t.Fatalf("%v does not round-trip: %v, %v", ap, back, perr)
			}
		}
	})
}

func sockaddr6(ip netip.Addr, port uint16, scope uint32) []byte {
	b := make([]byte, 28)
	binary.NativeEndian.PutUint16(b, syscall.AF_INET6)
	binary.BigEndian.PutUint16(b[2:], port)
	a := ip.As16()
	copy(b[8:], a[:])
	binary.NativeEndian.PutUint32(b[24:], scope)
	return b
}

// TestParseZone: a link-local destination keeps the interface it came in
// on, or it could not be dialled; an address without a scope has no zone.
func TestParseZone(t *testing.T) {
	tests := []struct {
		b    []byte
		want string
	}{
		{sockaddr6(netip.MustParseAddr("fe80::1"), 8080, 7), "[fe80::1%7]:8080"},
		{sockaddr6(netip.MustParseAddr("fe80::1"), 8080, 0), "[fe80::1]:8080"},
		{sockaddr6(netip.MustParseAddr("fd00::1"), 443, 0), "[fd00::1]:443"},
		// An IPv4-mapped address is IPv4: no zone, whatever the scope says.
		{sockaddr6(netip.MustParseAddr("::ffff:198.18.0.7"), 80, 3), "198.18.0.7:80"},
		// A sockaddr_in6 cut before its scope ID: no zone.
		{sockaddr6(netip.MustParseAddr("fe80::1"), 80, 7)[:24], "[fe80::1]:80"},
	}
	for _, tt := range tests {
		got, err := origdst.Parse(tt.b)
		if err != nil || got.String() != tt.want {
			t.Errorf("Parse(% x) = %v, %v; want %s", tt.b, got, err, tt.want)
		}
	}
}
