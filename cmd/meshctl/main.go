// Command meshctl operates mesh.
package main

import (
	"fmt"
	"os"

	"github.com/mesh-dev/mesh/meshctl"
)

func main() {
	if err := meshctl.New().Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "meshctl:", err)
		os.Exit(1)
	}
}
