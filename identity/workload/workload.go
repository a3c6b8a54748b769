// Package workload serves the SPIFFE Workload API on a Unix socket inside a
// pod, so applications that speak SPIFFE natively (go-spiffe's workloadapi,
// spiffe-helper, Envoy's SDS via SPIRE's conventions) get the pod's SVID and
// trust bundle with no mesh-specific code.
//
// The Workload API hands the SVID's private key to the application: that
// is its purpose. The proxy therefore serves it from a source of its own,
// whose key is never the proxy's.
package workload

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	workloadpb "github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// Source is where the served SVID and bundle come from; identity/source's
// Source is one.
type Source interface {
	x509svid.Source
	x509bundle.Source
	// Updated returns a channel closed at the next change.
	Updated() <-chan struct{}
}

// Config configures a Server.
type Config struct {
	// Source of the SVID and bundle. Required.
	Source Source
	// TrustDomain of the served bundle. Required.
	TrustDomain spiffeid.TrustDomain
	// Logger. Zero means slog.Default().
	Logger *slog.Logger
}

// Server is a SPIFFE Workload API server for one workload.
type Server struct {
	workloadpb.UnimplementedSpiffeWorkloadAPIServer
	cfg Config
}

// New validates cfg and returns a server.
func New(cfg Config) (*Server, error) {
	if cfg.Source == nil {
		return nil, errors.New("workload: Config.Source is required")
	}
	if cfg.TrustDomain.IsZero() {
		return nil, errors.New("workload: Config.TrustDomain is required")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	return &Server{cfg: cfg}, nil
}

// Serve listens on the Unix socket at path until ctx ends. A stale socket
// file is replaced.
func (s *Server) Serve(ctx context.Context, path string) error {
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("workload: remove stale socket: %w", err)
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		return fmt.Errorf("workload: listen on %s: %w", path, err)
	}
	gs := grpc.NewServer()
	workloadpb.RegisterSpiffeWorkloadAPIServer(gs, s)
	errc := make(chan error, 1)
	go func() { errc <- gs.Serve(ln) }()
	select {
	case <-ctx.Done():
		// Streams are long-lived by design: stop rather than drain.
		gs.Stop()
		<-errc
		_ = os.Remove(path)
		return nil
	case err := <-errc:
		return fmt.Errorf("workload: serve: %w", err)
	}
}

// checkHeader enforces the Workload API's security header, which stops a
// browser or a server-side request forgery from reaching the socket.
func checkHeader(ctx context.Context) error {
	md, _ := metadata.FromIncomingContext(ctx)
	if v := md.Get("workload.spiffe.io"); len(v) != 1 || v[0] != "true" {
		return status.Error(codes.InvalidArgument, "security header missing from request")
	}
	return nil
}

// FetchX509SVID implements the Workload API: the current SVID now, and
// again at every change, until the client goes away.
func (s *Server) FetchX509SVID(_ *workloadpb.X509SVIDRequest, stream grpc.ServerStreamingServer[workloadpb.X509SVIDResponse]) error {
	ctx := stream.Context()
	if err := checkHeader(ctx); err != nil {
		return err
	}
	for {
		updated := s.cfg.Source.Updated()
		resp, err := s.svidResponse()
		if err != nil {
			return status.Error(codes.Unavailable, err.Error())
		}
		if err := stream.Send(resp); err != nil {
			return err
		}
		select {
		case <-ctx.Done():
			return nil
		case <-updated:
		}
	}
}

func (s *Server) svidResponse() (*workloadpb.X509SVIDResponse, error) {
	svid, err := s.cfg.Source.GetX509SVID()
	if err != nil {
		return nil, err
	}
	certs, key, err := svid.MarshalRaw()
	if err != nil {
		return nil, fmt.Errorf("workload: marshal SVID: %w", err)
	}
	bundle, err := s.bundle()
	if err != nil {
		return nil, err
	}
	return &workloadpb.X509SVIDResponse{Svids: []*workloadpb.X509SVID{{
		SpiffeId: svid.ID.String(), X509Svid: certs, X509SvidKey: key, Bundle: bundle,
	}}}, nil
}

func (s *Server) bundle() ([]byte, error) {
	b, err := s.cfg.Source.GetX509BundleForTrustDomain(s.cfg.TrustDomain)
	if err != nil {
		return nil, err
	}
	return concatDER(b.X509Authorities()), nil
}

// FetchX509Bundles implements the Workload API for clients that only
// verify.
func (s *Server) FetchX509Bundles(_ *workloadpb.X509BundlesRequest, stream grpc.ServerStreamingServer[workloadpb.X509BundlesResponse]) error {
	ctx := stream.Context()
	if err := checkHeader(ctx); err != nil {
		return err
	}
	for {
		updated := s.cfg.Source.Updated()
		b, err := s.bundle()
		if err != nil {
			return status.Error(codes.Unavailable, err.Error())
		}
		if err := stream.Send(&workloadpb.X509BundlesResponse{Bundles: map[string][]byte{s.cfg.TrustDomain.IDString(): b}}); err != nil {
			return err
		}
		select {
		case <-ctx.Done():
			return nil
		case <-updated:
		}
	}
}

func concatDER(certs []*x509.Certificate) []byte {
	var out []byte
	for _, c := range certs {
		out = append(out, c.Raw...)
	}
	return out
}
