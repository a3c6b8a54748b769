// Command mesh-demo runs mesh end to end on the local cluster (make demo).
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/mesh-dev/mesh/e2e/demo"
)

func main() {
	dir := flag.String("dir", ".cache/demo", "working folder")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := os.RemoveAll(*dir); err != nil {
		fmt.Fprintln(os.Stderr, "mesh-demo:", err)
		os.Exit(1)
	}
	if err := demo.Run(ctx, demo.Config{Dir: *dir, Out: os.Stdout}); err != nil {
		fmt.Fprintln(os.Stderr, "mesh-demo:", err)
		os.Exit(1)
	}
}
