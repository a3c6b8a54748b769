// Command mesh-controller is mesh's control plane; see package
// meshcontroller.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/mesh-dev/mesh/meshcontroller"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := meshcontroller.New().ExecuteContext(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "mesh-controller:", err)
		os.Exit(1)
	}
}
