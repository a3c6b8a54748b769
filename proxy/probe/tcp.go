package probe

import (
	"context"
	"fmt"
)

// tcpCheck compiles a tcpSocket probe: success is a completed connect, as
// for the kubelet. Nothing is written.
func (h *Handler) tcpCheck(port int32) func(context.Context) error {
	addr := h.addr(port)
	return func(ctx context.Context) error {
		c, err := h.dial(ctx, "tcp", addr)
		if err != nil {
			return fmt.Errorf("probe: tcp: %w", err)
		}
		return c.Close()
	}
}
