// Package origdst recovers the destination a connection had before
// iptables REDIRECT sent it to the proxy (SO_ORIGINAL_DST).
package origdst

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// soOriginalDst is SO_ORIGINAL_DST (linux/netfilter_ipv4.h), and
// IP6T_SO_ORIGINAL_DST for IPv6: both 80.
const soOriginalDst = 80

// Get returns the original destination of a redirected TCP connection. A
// link-local IPv6 address carries its zone as the interface index ("5"),
// which net.Dial accepts. For a connection that was not redirected the
// kernel reports the address the client dialled, the local address itself,
// so a caller can recognise a connection addressed to its own listener.
func Get(c *net.TCPConn) (netip.AddrPort, error) {
	raw, err := c.SyscallConn()
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("origdst: %w", err)
	}
	local, _ := c.LocalAddr().(*net.TCPAddr)
	v6 := local != nil && local.IP.To4() == nil
	var buf [28]byte // sockaddr_in6, the larger of the two
	var sockErr error
	err = raw.Control(func(fd uintptr) {
		level, size := unix.SOL_IP, uint32(16)
		if v6 {
			level, size = unix.SOL_IPV6, 28
		}
		_, _, errno := unix.Syscall6(unix.SYS_GETSOCKOPT, fd, uintptr(level), soOriginalDst, uintptr(unsafe.Pointer(&buf[0])), uintptr(unsafe.Pointer(&size)), 0)
		if errno != 0 {
			sockErr = errno
		}
	})
	if err == nil {
		err = sockErr
	}
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("origdst: getsockopt SO_ORIGINAL_DST: %w", err)
	}
	return Parse(buf[:])
}

// Parse decodes a sockaddr_in or sockaddr_in6 as the kernel returns it; a
// sockaddr_in6 with a scope ID gives an address zoned with that index.
func Parse(b []byte) (netip.AddrPort, error) {
	if len(b) < 2 {
		return netip.AddrPort{}, errors.New("origdst: short sockaddr")
	}
	family := binary.NativeEndian.Uint16(b[:2])
	switch family {
	case syscall.AF_INET:
		if len(b) < 8 {
			return netip.AddrPort{}, errors.New("origdst: short sockaddr_in")
		}
		port := binary.BigEndian.Uint16(b[2:4])
		return netip.AddrPortFrom(netip.AddrFrom4([4]byte(b[4:8])), port), nil
	case syscall.AF_INET6:
		if len(b) < 24 {
			return netip.AddrPort{}, errors.New("origdst: short sockaddr_in6")
		}
		port := binary.BigEndian.Uint16(b[2:4])
		addr := netip.AddrFrom16([16]byte(b[8:24])).Unmap()
		// The kernel sets sin6_scope_id for a link-local destination: the
		// interface it arrived on. Without it the address cannot be dialled.
		if len(b) >= 28 && addr.Is6() {
			if scope := binary.NativeEndian.Uint32(b[24:28]); scope != 0 {
				addr = addr.WithZone(strconv.FormatUint(uint64(scope), 10))
			}
		}
		return netip.AddrPortFrom(addr, port), nil
	}
	return netip.AddrPort{}, fmt.Errorf("origdst: unknown address family %d", family)
}
