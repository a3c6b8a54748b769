package workloadapi

import (
	"context"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
)

// SecurityHeader is the metadata key every Workload API call carries, with
// the value "true" (the SPIFFE Workload Endpoint spec).
const SecurityHeader = "workload.spiffe.io"

// admit lets a call through if its caller's UID is allowed and it carries
// the security header. The UID is checked first: a caller not allowed
// learns nothing else.
func (s *Server) admit(ctx context.Context) error {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return status.Error(codes.PermissionDenied, "workloadapi: the caller's credentials are unknown")
	}
	c, ok := p.AuthInfo.(Caller)
	if !ok {
		return status.Error(codes.PermissionDenied, "workloadapi: the caller's credentials are unknown")
	}
	if !s.allowed[c.UID] {
		s.cfg.Logger.Warn("workload API call refused: uid not allowed", "uid", c.UID, "gid", c.GID, "pid", c.PID)
		return status.Errorf(codes.PermissionDenied, "workloadapi: uid %d may not use this Workload API", c.UID)
	}
	md, _ := metadata.FromIncomingContext(ctx)
	if v := md.Get(SecurityHeader); len(v) != 1 || v[0] != "true" {
		return status.Errorf(codes.InvalidArgument, "workloadapi: security header missing from request (%s: true)", SecurityHeader)
	}
	return nil
}
