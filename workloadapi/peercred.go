package workloadapi

import (
	"context"
	"errors"
	"fmt"
	"net"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc/credentials"
)

// Caller is a connection's peer as the kernel saw it when it connected
// (SO_PEERCRED): the gRPC AuthInfo of every call on the connection.
type Caller struct {
	credentials.CommonAuthInfo
	PID      int32
	UID, GID uint32
}

// AuthType implements credentials.AuthInfo.
func (Caller) AuthType() string { return "peercred" }

// peerCredentials are gRPC transport credentials that do no handshake but
// read the peer's credentials from the unix socket: the server side only.
type peerCredentials struct{}

func (peerCredentials) ServerHandshake(conn net.Conn) (net.Conn, credentials.AuthInfo, error) {
	c, err := peerOf(conn)
	if err != nil {
		return nil, nil, err
	}
	return conn, c, nil
}

// peerOf reads conn's peer credentials.
func peerOf(conn net.Conn) (Caller, error) {
	uc, ok := conn.(*net.UnixConn)
	if !ok {
		return Caller{}, fmt.Errorf("workloadapi: a %T is not a unix socket connection: no peer credentials", conn)
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return Caller{}, fmt.Errorf("workloadapi: peer credentials: %w", err)
	}
	var cred *unix.Ucred
	var credErr error
	if err := raw.Control(func(fd uintptr) {
		cred, credErr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return Caller{}, fmt.Errorf("workloadapi: peer credentials: %w", err)
	}
	if credErr != nil {
		return Caller{}, fmt.Errorf("workloadapi: peer credentials (SO_PEERCRED): %w", credErr)
	}
	return Caller{
		// A unix socket on the node: nothing on a wire to protect.
		CommonAuthInfo: credentials.CommonAuthInfo{SecurityLevel: credentials.PrivacyAndIntegrity},
		PID:            cred.Pid, UID: cred.Uid, GID: cred.Gid,
	}, nil
}

func (peerCredentials) ClientHandshake(context.Context, string, net.Conn) (net.Conn, credentials.AuthInfo, error) {
	return nil, nil, errors.New("workloadapi: peer credentials are for the server side only")
}

func (peerCredentials) Info() credentials.ProtocolInfo {
	return credentials.ProtocolInfo{SecurityProtocol: "peercred"}
}

func (p peerCredentials) Clone() credentials.TransportCredentials { return p }

func (peerCredentials) OverrideServerName(string) error { return nil }
