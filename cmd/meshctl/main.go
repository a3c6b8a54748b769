// Command meshctl operates mesh.
package main

import (
	"fmt"
	"os"

	"github.com/mesh-dev/mesh/meshctl"
)

func main() {
	err := meshctl.New().Execute()
	if err != nil {
		fmt.Fprintln(os.Stderr, "meshctl:", err)
	}
	os.Exit(meshctl.ExitCode(err))
}
