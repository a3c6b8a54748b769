// Command mesh-demo runs mesh end to end on the local cluster and leaves it
// running (make demo: `mesh-demo up`), or stops it (make demo-down:
// `mesh-demo down`). See package e2e/demo.
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
	fs := flag.NewFlagSet("mesh-demo", flag.ExitOnError)
	fs.Usage = func() {
		fmt.Fprintln(fs.Output(), "usage: mesh-demo up|down [--dir DIR]")
		fs.PrintDefaults()
	}
	if len(os.Args) < 2 || (os.Args[1] != "up" && os.Args[1] != "down") {
		fs.Usage()
		os.Exit(2)
	}
	dir := fs.String("dir", ".cache/demo", "the demo's working folder (its cluster is in DIR/cluster)")
	_ = fs.Parse(os.Args[2:])
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	var err error
	if os.Args[1] == "up" {
		err = demo.Up(ctx, demo.Config{Dir: *dir, Out: os.Stdout})
	} else {
		err = demo.Down(ctx, *dir)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "mesh-demo:", err)
		os.Exit(1)
	}
}
