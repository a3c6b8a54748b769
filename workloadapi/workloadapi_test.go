package workloadapi_test

import (
	"context"
	"crypto"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	spiffeapi "github.com/spiffe/go-spiffe/v2/workloadapi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/mesh-dev/mesh/internal/testpki"
	"github.com/mesh-dev/mesh/workloadapi"
)

var td = spiffeid.RequireTrustDomainFromString("example.org")

const (
	svidID = "spiffe://example.org/ns/shop/sa/web"
	// Callers that are not the test's own (root) UID, run as child
	// processes: appUID is allowed, otherUID is not.
	appUID   = 4242
	otherUID = 4243
)

// TestMain runs the child mode: a Workload API client as another UID.
func TestMain(m *testing.M) {
	if uid := os.Getenv("WAPI_TEST_CHILD_UID"); uid != "" {
		os.Exit(child(uid, os.Getenv("WAPI_TEST_CHILD_ADDR")))
	}
	os.Exit(m.Run())
}

// childResult is what a child reports on its standard output.
type childResult struct {
	ID, Serial, Err string
	Code            codes.Code
}

// child drops to uid (and a group of the same number, no supplementary
// groups) and fetches an SVID with go-spiffe's client.
func child(uidStr, addr string) int {
	uid, _ := strconv.Atoi(uidStr)
	var r childResult
	if err := syscall.Setgroups(nil); err != nil {
		r.Err = err.Error()
	} else if err := syscall.Setgid(uid); err != nil {
		r.Err = err.Error()
	} else if err := syscall.Setuid(uid); err != nil {
		r.Err = err.Error()
	} else {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		svid, err := spiffeapi.FetchX509SVID(ctx, spiffeapi.WithAddr(addr))
		if err != nil {
			r.Err, r.Code = err.Error(), status.Code(err)
		} else {
			r.ID, r.Serial = svid.ID.String(), svid.Certificates[0].SerialNumber.String()
		}
	}
	_ = json.NewEncoder(os.Stdout).Encode(r)
	return 0
}

// runChild fetches an SVID from addr as uid in a child process.
func runChild(t *testing.T, uid int, addr string) childResult {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.CommandContext(t.Context(), exe, "-test.run=^$")
	cmd.Env = append(os.Environ(), fmt.Sprintf("WAPI_TEST_CHILD_UID=%d", uid), "WAPI_TEST_CHILD_ADDR="+addr)
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("child as uid %d: %v: %s", uid, err, out)
	}
	var r childResult
	if err := json.Unmarshal(out, &r); err != nil {
		t.Fatalf("child as uid %d: %v: %s", uid, err, out)
	}
	return r
}

// socketDir is a directory like the pod's emptyDir: mode 0777, reachable
// by every UID.
func socketDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "wapi-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o777); err != nil {
		t.Fatal(err)
	}
	return dir
}

// serve runs a server on a new socket until the test ends, and returns
// the socket's path once it exists.
func serve(t *testing.T, src *testpki.Source, uids ...uint32) string {
	t.Helper()
	path := filepath.Join(socketDir(t), "socket")
	srv, err := workloadapi.New(workloadapi.Config{Source: src, TrustDomain: td, SocketPath: path, AllowedUIDs: uids})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
		if _, err := os.Lstat(path); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("the socket is still there after Run: %v", err)
		}
	})
	waitSocket(t, path, done)
	return path
}

// waitSocket waits for Run to create path (bounded), failing if Run ends.
func waitSocket(t *testing.T, path string, done <-chan error) {
	t.Helper()
	for range 500 {
		if fi, err := os.Lstat(path); err == nil && fi.Mode().Type() == os.ModeSocket {
			return
		}
		select {
		case err := <-done:
			t.Fatalf("Run ended: %v", err)
		case <-time.After(10 * time.Millisecond):
		}
	}
	t.Fatalf("no socket at %s after 5s", path)
}

func addr(path string) spiffeapi.ClientOption { return spiffeapi.WithAddr("unix://" + path) }

func root() uint32 { return uint32(os.Geteuid()) }

// TestFetch: go-spiffe's own client gets the proxy's SVID (chain, and a
// key that matches it) and bundle, and sees the SVID rotate and the
// bundle change through its X509Source.
func TestFetch(t *testing.T) {
	pki := testpki.New(t, "example.org")
	src := pki.Source(t, svidID)
	path := serve(t, src, root())
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()

	want, _ := src.GetX509SVID()
	got, err := spiffeapi.FetchX509SVID(ctx, addr(path))
	if err != nil {
		t.Fatal(err)
	}
	sameSVID(t, got, want)

	bundles, err := spiffeapi.FetchX509Bundles(ctx, addr(path))
	if err != nil {
		t.Fatal(err)
	}
	b, err := bundles.GetX509BundleForTrustDomain(pki.TD)
	if err != nil || !b.Equal(pki.Bundle()) || bundles.Len() != 1 {
		t.Errorf("bundles %v (%v), want only %s's", bundles.Bundles(), err, pki.TD)
	}

	// Rotation: the stream delivers the new SVID.
	xs, err := spiffeapi.NewX509Source(ctx, spiffeapi.WithClientOptions(addr(path)))
	if err != nil {
		t.Fatal(err)
	}
	defer xs.Close()
	first, _ := xs.GetX509SVID()
	sameSVID(t, first, want)
	next := src.Rotate(t)
	if err := xs.WaitUntilUpdated(ctx); err != nil {
		t.Fatal(err)
	}
	rotated, _ := xs.GetX509SVID()
	sameSVID(t, rotated, next)

	// A bundle change (a root rotation begins): both roots reach the app.
	other := testpki.New(t, "example.org")
	both := x509bundle.FromX509Authorities(pki.TD, append(pki.Bundle().X509Authorities(), other.Bundle().X509Authorities()...))
	src.SetBundle(both)
	if err := xs.WaitUntilUpdated(ctx); err != nil {
		t.Fatal(err)
	}
	if b, err := xs.GetX509BundleForTrustDomain(pki.TD); err != nil || !b.Equal(both) {
		t.Errorf("bundle after the change: %v, %v", b, err)
	}
}

// sameSVID fails unless got is want: the same chain, and a key for it.
func sameSVID(t *testing.T, got, want *x509svid.SVID) {
	t.Helper()
	if got.ID != want.ID || len(got.Certificates) != len(want.Certificates) {
		t.Fatalf("SVID %s with %d certificates, want %s with %d", got.ID, len(got.Certificates), want.ID, len(want.Certificates))
	}
	for i := range got.Certificates {
		if !got.Certificates[i].Equal(want.Certificates[i]) {
			t.Errorf("certificate %d differs (serial %s, want %s)", i, got.Certificates[i].SerialNumber, want.Certificates[i].SerialNumber)
		}
	}
	pub := got.PrivateKey.Public().(interface{ Equal(crypto.PublicKey) bool })
	if !pub.Equal(want.Certificates[0].PublicKey) {
		t.Error("the key served is not the SVID's")
	}
}

// rawCall calls method on the socket at path with gRPC directly, with
// header or not, and returns the first response's error.
func rawCall(t *testing.T, path, method string, header bool) error {
	t.Helper()
	conn, err := grpc.NewClient("unix://"+path, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	if header {
		ctx = metadata.AppendToOutgoingContext(ctx, workloadapi.SecurityHeader, "true")
	}
	c := workload.NewSpiffeWorkloadAPIClient(conn)
	switch method {
	case "FetchX509SVID":
		s, err := c.FetchX509SVID(ctx, &workload.X509SVIDRequest{})
		if err != nil {
			return err
		}
		_, err = s.Recv()
		return err
	case "FetchX509Bundles":
		s, err := c.FetchX509Bundles(ctx, &workload.X509BundlesRequest{})
		if err != nil {
			return err
		}
		_, err = s.Recv()
		return err
	case "FetchJWTSVID":
		_, err := c.FetchJWTSVID(ctx, &workload.JWTSVIDRequest{Audience: []string{"a"}})
		return err
	case "ValidateJWTSVID":
		_, err := c.ValidateJWTSVID(ctx, &workload.ValidateJWTSVIDRequest{Audience: "a", Svid: "x"})
		return err
	case "FetchJWTBundles":
		s, err := c.FetchJWTBundles(ctx, &workload.JWTBundlesRequest{})
		if err != nil {
			return err
		}
		_, err = s.Recv()
		return err
	}
	t.Fatalf("no method %s", method)
	return nil
}

// TestRefused: who and what is refused, with which code.
func TestRefused(t *testing.T) {
	pki := testpki.New(t, "example.org")
	tests := []struct {
		name    string
		uids    []uint32 // allowed
		noSVID  bool
		method  string
		header  bool
		code    codes.Code
		message string
	}{
		{name: "allowed with header", uids: []uint32{root()}, method: "FetchX509SVID", header: true, code: codes.OK},
		{name: "bundles allowed with header", uids: []uint32{root()}, method: "FetchX509Bundles", header: true, code: codes.OK},
		{name: "no security header", uids: []uint32{root()}, method: "FetchX509SVID", code: codes.InvalidArgument, message: "security header missing"},
		{name: "bundles without security header", uids: []uint32{root()}, method: "FetchX509Bundles", code: codes.InvalidArgument, message: "security header missing"},
		// Root passes the file system's check (CAP_DAC_OVERRIDE); the
		// kernel's peer credentials stop it.
		{name: "uid not allowed, with header", uids: []uint32{appUID}, method: "FetchX509SVID", header: true, code: codes.PermissionDenied, message: fmt.Sprintf("uid %d may not use", root())},
		{name: "uid not allowed, without header", uids: []uint32{appUID}, method: "FetchX509Bundles", code: codes.PermissionDenied, message: "may not use"},
		{name: "uid not allowed, JWT", uids: []uint32{appUID}, method: "FetchJWTSVID", header: true, code: codes.PermissionDenied, message: "may not use"},
		{name: "no identity", uids: []uint32{root()}, noSVID: true, method: "FetchX509SVID", header: true, code: codes.PermissionDenied, message: "no identity issued"},
		{name: "JWT-SVIDs unimplemented", uids: []uint32{root()}, method: "FetchJWTSVID", header: true, code: codes.Unimplemented},
		{name: "JWT validation unimplemented", uids: []uint32{root()}, method: "ValidateJWTSVID", header: true, code: codes.Unimplemented},
		{name: "JWT bundles unimplemented", uids: []uint32{root()}, method: "FetchJWTBundles", header: true, code: codes.Unimplemented},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			src := pki.Source(t, svidID)
			if tc.noSVID {
				src.Set(nil)
			}
			path := serve(t, src, tc.uids...)
			err := rawCall(t, path, tc.method, tc.header)
			if status.Code(err) != tc.code || !strings.Contains(status.Convert(err).Message(), tc.message) {
				t.Fatalf("error %v, want code %s with %q", err, tc.code, tc.message)
			}
		})
	}
}

// TestOtherUIDs: callers as other UIDs (child processes): the app's UID
// gets the SVID, which the ACL lets it reach; another UID cannot even
// connect.
func TestOtherUIDs(t *testing.T) {
	pki := testpki.New(t, "example.org")
	src := pki.Source(t, svidID)
	path := serve(t, src, appUID)
	want, _ := src.GetX509SVID()

	got := runChild(t, appUID, "unix://"+path)
	if got.Err != "" || got.ID != svidID || got.Serial != want.Certificates[0].SerialNumber.String() {
		t.Errorf("uid %d (allowed): %+v, want the SVID %s", appUID, got, want.Certificates[0].SerialNumber)
	}
	got = runChild(t, otherUID, "unix://"+path)
	if got.ID != "" || got.Code != codes.Unavailable || !strings.Contains(got.Err, "permission denied") {
		t.Errorf("uid %d (not allowed): %+v, want the connection refused by the socket's permissions", otherUID, got)
	}
}

// TestPeerCredentialsUnprivileged: an unprivileged UID the file system
// lets through (the socket opened to all by hand) but the server does not
// allow is refused by its peer credentials. TestRefused covers root; this
// is the same check for an ordinary UID.
func TestPeerCredentialsUnprivileged(t *testing.T) {
	pki := testpki.New(t, "example.org")
	src := pki.Source(t, svidID)
	path := serve(t, src, root())
	// Open the socket to everyone: only the peer credentials are left.
	if err := os.Chmod(path, 0o666); err != nil {
		t.Fatal(err)
	}
	got := runChild(t, otherUID, "unix://"+path)
	if got.Code != codes.PermissionDenied || !strings.Contains(got.Err, fmt.Sprintf("uid %d may not use", otherUID)) {
		t.Errorf("uid %d: %+v, want PermissionDenied by its peer credentials", otherUID, got)
	}
}

// TestSocket: the socket's mode is not world-writable, it replaces a
// stale file, no temporary directory is left beside it, and a socket that
// replaced it is not removed at exit.
func TestSocket(t *testing.T) {
	pki := testpki.New(t, "example.org")
	src := pki.Source(t, svidID)
	dir := socketDir(t)
	path := filepath.Join(dir, "socket")
	if err := os.WriteFile(path, []byte("stale"), 0o666); err != nil {
		t.Fatal(err)
	}
	srv, err := workloadapi.New(workloadapi.Config{Source: src, TrustDomain: td, SocketPath: path, AllowedUIDs: []uint32{appUID, 4244, appUID}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	waitSocket(t, path, done)

	fi, err := os.Lstat(path)
	if err != nil {
		t.Fatal(err)
	}
	st := fi.Sys().(*syscall.Stat_t)
	// 0660: the group bits are the ACL's mask; the group itself has no
	// entry. Others: nothing.
	if fi.Mode().Perm() != 0o660 || st.Uid != root() {
		t.Errorf("socket mode %v owner %d, want srw-rw---- (ACL mask) owned by %d", fi.Mode(), st.Uid, root())
	}
	acl := make([]byte, 1024)
	n, err := syscall.Getxattr(path, "system.posix_acl_access", acl)
	if err != nil {
		t.Fatalf("the socket has no ACL: %v", err)
	}
	if want := 4 + 8*6; n != want { // owner, 2 users, group, mask, other
		t.Errorf("ACL of %d bytes, want %d (the duplicate UID once)", n, want)
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Errorf("the socket directory holds %v, want the socket only", entries)
	}

	// A successor's socket replaces ours: ours must not remove it.
	successor := path + ".new"
	if err := os.WriteFile(successor, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(successor, path); err != nil {
		t.Fatal(err)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(path); err != nil {
		t.Errorf("the successor's file was removed: %v", err)
	}
}

// TestNew: what Config is refused.
func TestNew(t *testing.T) {
	src := testpki.New(t, "example.org").Source(t, svidID)
	many := make([]uint32, 257)
	tests := []struct {
		name string
		cfg  workloadapi.Config
		err  string
	}{
		{"no source", workloadapi.Config{TrustDomain: td, SocketPath: "/run/s", AllowedUIDs: []uint32{1}}, "workloadapi: Config.Source is required"},
		{"no trust domain", workloadapi.Config{Source: src, SocketPath: "/run/s", AllowedUIDs: []uint32{1}}, "workloadapi: Config.TrustDomain is required"},
		{"relative path", workloadapi.Config{Source: src, TrustDomain: td, SocketPath: "run/s", AllowedUIDs: []uint32{1}}, `workloadapi: socket path "run/s" is not a clean absolute path`},
		{"unclean path", workloadapi.Config{Source: src, TrustDomain: td, SocketPath: "/run/../s", AllowedUIDs: []uint32{1}}, "is not a clean absolute path"},
		{"no uids", workloadapi.Config{Source: src, TrustDomain: td, SocketPath: "/run/s"}, "workloadapi: Config.AllowedUIDs is empty: no one could call"},
		{"too many uids", workloadapi.Config{Source: src, TrustDomain: td, SocketPath: "/run/s", AllowedUIDs: many}, "workloadapi: 257 allowed UIDs, more than 256"},
		{"path too long", workloadapi.Config{Source: src, TrustDomain: td, SocketPath: "/" + strings.Repeat("d", 90) + "/s", AllowedUIDs: []uint32{1}}, "is too long for a unix socket"},
		{"fine", workloadapi.Config{Source: src, TrustDomain: td, SocketPath: "/run/spiffe/workload/socket", AllowedUIDs: []uint32{1000}}, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := workloadapi.New(tc.cfg)
			if (tc.err == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), tc.err)) {
				t.Fatalf("New: %v, want %q", err, tc.err)
			}
		})
	}
}

// TestRunFails: a socket directory that does not exist ends Run with an
// error naming it.
func TestRunFails(t *testing.T) {
	src := testpki.New(t, "example.org").Source(t, svidID)
	srv, err := workloadapi.New(workloadapi.Config{Source: src, TrustDomain: td, SocketPath: "/nonexistent-wapi-dir/socket", AllowedUIDs: []uint32{1}})
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Run(t.Context()); err == nil || !strings.Contains(err.Error(), "workloadapi: socket directory") || !strings.Contains(err.Error(), "nonexistent-wapi-dir") {
		t.Fatalf("Run: %v", err)
	}
}

// TestRunStopsStreams: open streams (which never end on their own) end
// when Run's context does, and Run returns and removes the socket.
func TestRunStopsStreams(t *testing.T) {
	src := testpki.New(t, "example.org").Source(t, svidID)
	path := filepath.Join(socketDir(t), "socket")
	srv, err := workloadapi.New(workloadapi.Config{Source: src, TrustDomain: td, SocketPath: path, AllowedUIDs: []uint32{root()}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	waitSocket(t, path, done)

	conn, err := grpc.NewClient("unix://"+path, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	cctx := metadata.AppendToOutgoingContext(t.Context(), workloadapi.SecurityHeader, "true")
	stream, err := workload.NewSpiffeWorkloadAPIClient(conn).FetchX509SVID(cctx, &workload.X509SVIDRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Recv(); err != nil {
		t.Fatal(err)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return with a stream open")
	}
	if _, err := stream.Recv(); err == nil {
		t.Error("the stream is still open after Run returned")
	}
	if _, err := os.Lstat(path); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("socket left after Run: %v", err)
	}
}
