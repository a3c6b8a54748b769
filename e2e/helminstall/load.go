package helminstall

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/mesh-dev/mesh/e2e/load"
)

// Load runs one of the echo app's load modes (args, for example
// "http-load", URL, CALLS, CONCURRENCY, RATE, "keepalive") in pod ns/pod
// for at most bound, and returns the summary it printed.
func Load(ctx context.Context, bound time.Duration, ns, pod string, args ...string) (load.Summary, error) {
	out, err := InPod(ctx, bound, ns, pod, args...)
	if err != nil {
		return load.Summary{}, fmt.Errorf("helminstall: %s in pod %s/%s: %w: %s", strings.Join(args, " "), ns, pod, err, out)
	}
	s, err := load.Parse([]byte(out))
	if err != nil {
		return load.Summary{}, fmt.Errorf("helminstall: %s in pod %s/%s: %w", strings.Join(args, " "), ns, pod, err)
	}
	return s, nil
}
