package workloadapi

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// maxSocketPath is what fits sockaddr_un's sun_path with its NUL.
const maxSocketPath = 107

// tempDirRand is how many characters os.MkdirTemp adds to the pattern.
const tempDirRand = 10

// tempSocketPath is where the socket is bound before it is renamed into
// place: inside a fresh directory of the proxy's only.
func tempSocketPath(dir, tmp string) string {
	if tmp == "" {
		return filepath.Join(dir, ".workload-api-", "s")
	}
	return filepath.Join(tmp, "s")
}

// listen creates the socket at path, reachable by uids only, and returns
// its listener and the socket file's identity (to remove only its own at
// exit).
//
// The socket is bound in a private directory (mode 0700), given mode 0600
// and its ACL there, and only then renamed to path: no one can connect
// while it is more open than it ends up. rename(2) also replaces a stale
// socket atomically.
func listen(path string, uids []uint32) (*net.UnixListener, os.FileInfo, error) {
	dir := filepath.Dir(path)
	tmp, err := os.MkdirTemp(dir, ".workload-api-")
	if err != nil {
		return nil, nil, fmt.Errorf("workloadapi: socket directory: %w", err)
	}
	defer os.RemoveAll(tmp)
	at := tempSocketPath(dir, tmp)
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: at, Net: "unix"})
	if err != nil {
		return nil, nil, fmt.Errorf("workloadapi: listen: %w", err)
	}
	// The name Close would unlink is the temporary one; Run removes the
	// real one.
	l.SetUnlinkOnClose(false)
	fail := func(err error) (*net.UnixListener, os.FileInfo, error) {
		l.Close()
		return nil, nil, err
	}
	if err := os.Chmod(at, 0o600); err != nil {
		return fail(fmt.Errorf("workloadapi: socket mode: %w", err))
	}
	if err := unix.Setxattr(at, "system.posix_acl_access", accessACL(uids), 0); err != nil {
		if errors.Is(err, unix.EOPNOTSUPP) {
			return fail(fmt.Errorf("workloadapi: the file system of %s has no POSIX ACLs, which grant the app UIDs the socket: %w", dir, err))
		}
		return fail(fmt.Errorf("workloadapi: socket ACL: %w", err))
	}
	if err := os.Rename(at, path); err != nil {
		return fail(fmt.Errorf("workloadapi: socket: %w", err))
	}
	fi, err := os.Lstat(path)
	if err != nil {
		return fail(fmt.Errorf("workloadapi: socket: %w", err))
	}
	return l, fi, nil
}

// POSIX ACL xattr encoding (linux/posix_acl_xattr.h).
const (
	aclVersion  = 2
	aclUserObj  = 0x01
	aclUser     = 0x02
	aclGroupObj = 0x04
	aclMask     = 0x10
	aclOther    = 0x20
	aclNoID     = 0xffffffff
	aclRW       = 0x4 | 0x2
)

// accessACL is the socket's access ACL: its owner and each of uids may
// read and write (connect needs write), its group and others nothing.
// Entries are in the order the kernel requires: by tag, then ID (uids are
// sorted and unique, as New leaves them).
func accessACL(uids []uint32) []byte {
	b := binary.LittleEndian.AppendUint32(nil, aclVersion)
	entry := func(tag, perm uint16, id uint32) {
		b = binary.LittleEndian.AppendUint16(b, tag)
		b = binary.LittleEndian.AppendUint16(b, perm)
		b = binary.LittleEndian.AppendUint32(b, id)
	}
	entry(aclUserObj, aclRW, aclNoID)
	for _, u := range uids {
		entry(aclUser, aclRW, u)
	}
	entry(aclGroupObj, 0, aclNoID)
	entry(aclMask, aclRW, aclNoID)
	entry(aclOther, 0, aclNoID)
	return b
}
