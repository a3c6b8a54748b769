package identity_test

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	workloadpb "github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/mesh-dev/mesh/identity"
	identityv1 "github.com/mesh-dev/mesh/identity/api/v1"
	"github.com/mesh-dev/mesh/identity/source"
	"github.com/mesh-dev/mesh/identity/workload"
)

// TestSourceAndWorkloadAPI runs the whole identity path on the real API
// server: a proxy-side source reads a pod-bound token from a file and gets
// its SVID from the identity service over TLS; the Workload API serves it
// on a Unix socket; and go-spiffe's own workloadapi client fetches the SVID
// and bundle from that socket.
func TestSourceAndWorkloadAPI(t *testing.T) {
	e := setup(t)
	pod := e.pod(t, "web-wl", "web")
	tokenFile := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tokenFile, []byte(e.token(t, pod, identity.DefaultAudience, true)), 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()

	conn, err := grpc.NewClient(e.svcAddr, e.clientCreds())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	src, err := source.New(ctx, source.Config{
		Certifier: identityv1.NewIdentityClient(conn), TrustDomain: td, Logger: quiet,
		Token: func() (string, error) { b, err := os.ReadFile(tokenFile); return string(b), err },
	})
	if err != nil {
		t.Fatalf("source: %v", err)
	}
	defer src.Close()
	own, err := src.GetX509SVID()
	if err != nil || own.ID.String() != "spiffe://cluster.local/ns/shop/sa/web" {
		t.Fatalf("source SVID = %v, %v", own, err)
	}

	srv, err := workload.New(workload.Config{Source: src, TrustDomain: td, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(t.TempDir(), "agent.sock")
	serveCtx, stop := context.WithCancel(ctx)
	served := make(chan error, 1)
	go func() { served <- srv.Serve(serveCtx, sock) }()
	defer func() {
		stop()
		if err := <-served; err != nil {
			t.Errorf("serve: %v", err)
		}
	}()
	waitForFile(t, sock)

	wl, err := workloadapi.NewX509Source(ctx, workloadapi.WithClientOptions(workloadapi.WithAddr("unix://"+sock)))
	if err != nil {
		t.Fatalf("workloadapi.NewX509Source: %v", err)
	}
	defer wl.Close()
	svid, err := wl.GetX509SVID()
	if err != nil {
		t.Fatal(err)
	}
	if svid.ID != own.ID || !svid.Certificates[0].Equal(own.Certificates[0]) {
		t.Fatalf("Workload API served %s (serial %s), want the source's %s", svid.ID, svid.Certificates[0].SerialNumber, own.ID)
	}
	if _, _, err := x509svid.Verify(svid.Certificates, wl); err != nil {
		t.Fatalf("SVID from the Workload API does not verify against its bundle: %v", err)
	}
	if b, err := wl.GetX509BundleForTrustDomain(td); err != nil || len(b.X509Authorities()) != len(e.ca.Bundle()) {
		t.Fatalf("bundle from the Workload API: %v, %v", b, err)
	}

	// Without the security header the Workload API answers nothing.
	raw, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	stream, err := workloadpb.NewSpiffeWorkloadAPIClient(raw).FetchX509SVID(ctx, &workloadpb.X509SVIDRequest{})
	if err == nil {
		_, err = stream.Recv()
	}
	if status.Code(err) != codes.InvalidArgument {
		t.Fatalf("request without the security header: %v, want InvalidArgument", err)
	}
}

func waitForFile(t *testing.T, path string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := os.Stat(path); err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s did not appear", path)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
