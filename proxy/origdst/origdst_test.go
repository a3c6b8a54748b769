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
	f.Fuzz(func(t *testing.T, b []byte) {
		ap, err := origdst.Parse(b)
		if err == nil && !ap.IsValid() {
			t.Fatal("invalid address without an error")
		}
	})
}
