// Command mesh-e2e-spiffe is a SPIFFE-native app for the end-to-end tests
// (image mesh/mesh-e2e-spiffe on the local cluster): it gets its SVID from
// the Workload API at SPIFFE_ENDPOINT_SOCKET with go-spiffe's own client,
// as any SPIFFE-native app would, and prints what it got, one JSON line
// (a Result) per event, on standard output:
//
//	mesh-e2e-spiffe watch   an X509Source: a line for the first SVID and
//	                        for every update, until SIGTERM
//	mesh-e2e-spiffe fetch   one FetchX509SVID call: a line with the SVID or
//	                        the error, then waits for SIGTERM (a pod's
//	                        container stays up for the test to read it)
//
// Both wait up to a minute for the socket to appear: the proxy creates it
// as it starts.
package main

import (
	"context"
	"crypto"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/mesh-dev/mesh/identity/appsvid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"google.golang.org/grpc/status"
)

// Result is one line of output.
type Result struct {
	SPIFFEID string `json:"spiffeID,omitempty"`
	Serial   string `json:"serial,omitempty"` // hex, as the proxy's /identity
	// PublicKey is the SVID's public key, PKIX DER.
	PublicKey []byte `json:"publicKey,omitempty"`
	// KeyMatches: the private key served is the certificate's.
	KeyMatches bool `json:"keyMatches,omitempty"`
	// AppMarked: the SVID carries the CA's mark of an app's SVID.
	AppMarked   bool   `json:"appMarked,omitempty"`
	BundleRoots int    `json:"bundleRoots,omitempty"`
	Code        string `json:"code,omitempty"`
	Error       string `json:"error,omitempty"`
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: mesh-e2e-spiffe watch|fetch")
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "watch":
		err = watch(ctx)
	case "fetch":
		fetch(ctx)
		<-ctx.Done()
	default:
		err = fmt.Errorf("unknown mode %q", os.Args[1])
	}
	if err != nil && ctx.Err() == nil {
		fmt.Fprintln(os.Stderr, "mesh-e2e-spiffe:", err)
		os.Exit(1)
	}
}

func emit(r Result) { _ = json.NewEncoder(os.Stdout).Encode(r) }

// waitSocket waits (bounded) for the socket file named by
// SPIFFE_ENDPOINT_SOCKET.
func waitSocket(ctx context.Context) {
	path := strings.TrimPrefix(os.Getenv("SPIFFE_ENDPOINT_SOCKET"), "unix://")
	for range 600 {
		if _, err := os.Stat(path); !errors.Is(err, fs.ErrNotExist) {
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func watch(ctx context.Context) error {
	waitSocket(ctx)
	src, err := workloadapi.NewX509Source(ctx)
	if err != nil {
		return err
	}
	defer src.Close()
	for {
		svid, err := src.GetX509SVID()
		if err != nil {
			return err
		}
		r := describe(svid)
		if b, err := src.GetX509BundleForTrustDomain(svid.ID.TrustDomain()); err == nil {
			r.BundleRoots = len(b.X509Authorities())
		}
		emit(r)
		if err := src.WaitUntilUpdated(ctx); err != nil {
			return err
		}
	}
}

func fetch(ctx context.Context) {
	waitSocket(ctx)
	fctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	svid, err := workloadapi.FetchX509SVID(fctx)
	if err != nil {
		emit(Result{Code: status.Code(err).String(), Error: err.Error()})
		return
	}
	emit(describe(svid))
}

func describe(svid *x509svid.SVID) Result {
	leaf := svid.Certificates[0]
	pub, _ := x509.MarshalPKIXPublicKey(leaf.PublicKey)
	matches := false
	if k, ok := svid.PrivateKey.Public().(interface{ Equal(crypto.PublicKey) bool }); ok {
		matches = k.Equal(leaf.PublicKey)
	}
	return Result{SPIFFEID: svid.ID.String(), Serial: leaf.SerialNumber.Text(16), PublicKey: pub, KeyMatches: matches, AppMarked: appsvid.Marked(leaf)}
}
