// Command mesh-proxy is mesh's sidecar; see package meshproxy.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/mesh-dev/mesh/meshproxy"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := meshproxy.New().ExecuteContext(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "mesh-proxy:", err)
		os.Exit(1)
	}
}
