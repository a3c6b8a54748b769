package probe

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
)

// maxGRPCMessage bounds the health response; a real one is a few bytes.
const maxGRPCMessage = 16 << 10

// grpcCheck compiles a grpc probe: grpc.health.v1.Health/Check with the
// configured service name over plaintext, or TLS without verifying the
// app's certificate with mode TLS; success is SERVING, as for the kubelet.
// Each probe opens and closes its own connection.
func (h *Handler) grpcCheck(g *GRPCAction) func(context.Context) error {
	addr := h.addr(g.Port)
	service := ""
	if g.Service != nil {
		service = *g.Service
	}
	creds := insecure.NewCredentials()
	if g.Mode != nil && *g.Mode == GRPCProbeModeTLS {
		// As the kubelet: the probe checks liveness, and the app's
		// certificate names whatever its clients expect, not the pod IP.
		creds = credentials.NewTLS(&tls.Config{InsecureSkipVerify: true}) //nolint:gosec // see above
	}
	return func(ctx context.Context) error {
		// passthrough: the address is an IP literal, no resolver runs.
		conn, err := grpc.NewClient("passthrough:///"+addr,
			grpc.WithTransportCredentials(creds),
			grpc.WithContextDialer(func(ctx context.Context, a string) (net.Conn, error) {
				return h.dial(ctx, "tcp", a)
			}),
			grpc.WithUserAgent(UserAgent),
			grpc.WithDisableRetry(),
			grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(maxGRPCMessage)),
		)
		if err != nil {
			return fmt.Errorf("probe: grpc: %w", err)
		}
		defer conn.Close()
		resp, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{Service: service})
		if err != nil {
			if status.Code(err) == codes.Unimplemented {
				return fmt.Errorf("probe: grpc: the app does not implement grpc.health.v1.Health: %w", err)
			}
			return fmt.Errorf("probe: grpc: %w", err)
		}
		if s := resp.GetStatus(); s != healthpb.HealthCheckResponse_SERVING {
			return fmt.Errorf("probe: grpc: service %q is %s", service, s)
		}
		return nil
	}
}
