package workloadapi

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
)

// Source is what the server hands out: the proxy's SVID and trust bundle,
// and a signal when either changes. identity/source.Source is one.
type Source interface {
	x509svid.Source
	x509bundle.Source
	// Updated returns a channel closed at the next change of the SVID or
	// the bundle.
	Updated() <-chan struct{}
}

// maxUIDs bounds AllowedUIDs: one ACL entry each, and a pod has a
// handful of containers.
const maxUIDs = 256

// Config configures a Server.
type Config struct {
	// Source of the SVID and bundle. Required.
	Source Source
	// TrustDomain whose bundle is served. Required.
	TrustDomain spiffeid.TrustDomain
	// SocketPath is where the socket is created: an absolute path in an
	// existing directory (the pod's shared emptyDir). A file already there
	// is replaced (a restarted proxy's stale socket). Required.
	SocketPath string
	// AllowedUIDs may call; every other caller is refused. Required.
	AllowedUIDs []uint32
	// Logger. Zero means slog.Default().
	Logger *slog.Logger
}

// Server serves the Workload API on a unix socket.
type Server struct {
	cfg     Config
	allowed map[uint32]bool
}

// New checks cfg and returns a Server; Run creates the socket.
func New(cfg Config) (*Server, error) {
	switch {
	case cfg.Source == nil:
		return nil, errors.New("workloadapi: Config.Source is required")
	case cfg.TrustDomain.IsZero():
		return nil, errors.New("workloadapi: Config.TrustDomain is required")
	case !filepath.IsAbs(cfg.SocketPath) || filepath.Clean(cfg.SocketPath) != cfg.SocketPath:
		return nil, fmt.Errorf("workloadapi: socket path %q is not a clean absolute path", cfg.SocketPath)
	case len(cfg.AllowedUIDs) == 0:
		return nil, errors.New("workloadapi: Config.AllowedUIDs is empty: no one could call")
	case len(cfg.AllowedUIDs) > maxUIDs:
		return nil, fmt.Errorf("workloadapi: %d allowed UIDs, more than %d", len(cfg.AllowedUIDs), maxUIDs)
	}
	// The temporary name the socket is bound at is longer than the final
	// one; both must fit sockaddr_un.
	if n := len(tempSocketPath(filepath.Dir(cfg.SocketPath), "")); n+tempDirRand > maxSocketPath {
		return nil, fmt.Errorf("workloadapi: socket directory %q is too long for a unix socket (%d bytes of %d)", filepath.Dir(cfg.SocketPath), n+tempDirRand, maxSocketPath)
	}
	if len(cfg.SocketPath) > maxSocketPath {
		return nil, fmt.Errorf("workloadapi: socket path %q is longer than a unix socket's %d bytes", cfg.SocketPath, maxSocketPath)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	cfg.AllowedUIDs = slices.Clone(cfg.AllowedUIDs)
	slices.Sort(cfg.AllowedUIDs)
	cfg.AllowedUIDs = slices.Compact(cfg.AllowedUIDs)
	s := &Server{cfg: cfg, allowed: map[uint32]bool{}}
	for _, u := range cfg.AllowedUIDs {
		s.allowed[u] = true
	}
	return s, nil
}

// Run creates the socket, serves until ctx ends, then stops every stream
// and removes the socket (if it is still the one it created).
func (s *Server) Run(ctx context.Context) error {
	l, created, err := listen(s.cfg.SocketPath, s.cfg.AllowedUIDs)
	if err != nil {
		return err
	}
	defer func() {
		// A successor (a restarted proxy) may have replaced the socket:
		// its socket is not ours to remove.
		if fi, err := os.Lstat(s.cfg.SocketPath); err == nil && os.SameFile(fi, created) {
			_ = os.Remove(s.cfg.SocketPath)
		}
	}()
	gs := grpc.NewServer(
		grpc.Creds(peerCredentials{}),
		grpc.ChainUnaryInterceptor(func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
			if err := s.admit(ctx); err != nil {
				return nil, err
			}
			return h(ctx, req)
		}),
		grpc.ChainStreamInterceptor(func(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, h grpc.StreamHandler) error {
			if err := s.admit(ss.Context()); err != nil {
				return err
			}
			return h(srv, ss)
		}),
		// The requests are empty messages; a caller has no reason to
		// send more, or to open many streams.
		grpc.MaxRecvMsgSize(maxRequest),
		grpc.MaxConcurrentStreams(maxStreams),
	)
	workload.RegisterSpiffeWorkloadAPIServer(gs, &service{src: s.cfg.Source, td: s.cfg.TrustDomain, log: s.cfg.Logger})
	s.cfg.Logger.Info("workload API listening", "socket", s.cfg.SocketPath, "uids", s.cfg.AllowedUIDs)
	served := make(chan error, 1)
	go func() { served <- gs.Serve(l) }()
	select {
	case <-ctx.Done():
		gs.Stop() // the streams never end on their own
		<-served
		return nil
	case err := <-served:
		return fmt.Errorf("workloadapi: serve %s: %w", s.cfg.SocketPath, err)
	}
}

// Bounds on what a caller may send.
const (
	maxRequest = 64 << 10
	maxStreams = 64
)
