// Command mesh-proxy is mesh's sidecar; see package meshproxy.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/mesh-dev/mesh/meshproxy"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := meshproxy.Main(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}
