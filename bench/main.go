// Command bench is `make bench`: mesh's proxy pair measured beside
// HAProxy's and NGINX's on the same machine, in the same run.
//
// Every target is the same path: load generator → client-side proxy
// (plaintext in, mTLS out) → server-side proxy (mTLS in, plaintext out) →
// backend, all on loopback. "direct" is the load generator straight to
// the backend. The proxies are pinned to one core with taskset, the load
// generator and the backend to the other; each proxy runs one worker (one
// thread for HAProxy and NGINX, GOMAXPROCS=1 for mesh). Targets are
// interleaved round by round, and each figure is the median of the
// rounds. The control plane follows (controlplane.go): SVID issuance
// with and without TokenReview, and a policy push to 1,000 proxies.
//
// It writes bench/results.json (every round's raw figures and the
// medians) and the generated section of docs/benchmarks.md. A failed
// request anywhere makes it exit non-zero after writing them.
//
//	go run ./bench            # the full run, under 20 minutes
//	go run ./bench -quick     # a smoke run: one round, 2 s per scenario
//	go run ./bench -scenarios svid,certify,push   # the control plane only
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"
)

// options are the command's flags.
type options struct {
	quick     bool
	rounds    int
	duration  time.Duration
	targets   string
	scenarios string
	work      string
	results   string
	doc       string
	setupOnly bool
	noInstall bool
}

func main() {
	var o options
	flag.BoolVar(&o.quick, "quick", false, "smoke run: 1 round, 2 s per scenario; writes results to the work directory, not docs/")
	flag.IntVar(&o.rounds, "rounds", 3, "rounds (each figure is the median)")
	flag.DurationVar(&o.duration, "duration", 10*time.Second, "length of each timed scenario")
	flag.StringVar(&o.targets, "targets", "direct,mesh,mesh-tcp,haproxy,nginx", "targets, comma-separated")
	flag.StringVar(&o.scenarios, "scenarios", "", "scenarios, comma-separated (default all): the data plane's, and the control plane's svid, certify and push")
	flag.StringVar(&o.work, "work", ".cache/bench", "work directory: certificates, configurations, logs")
	flag.StringVar(&o.results, "results", "bench/results.json", "machine-readable results")
	flag.StringVar(&o.doc, "doc", "docs/benchmarks.md", "document whose generated section is rewritten")
	flag.BoolVar(&o.setupOnly, "setup-only", false, "install the tools and build mesh-proxy, then stop")
	flag.BoolVar(&o.noInstall, "no-install", false, "do not apt-get or go install missing tools")
	flag.Parse()
	log.SetFlags(log.Ltime)
	log.SetPrefix("bench: ")
	if o.quick {
		// Quick figures never land in the repository unless asked for.
		set := map[string]bool{}
		flag.Visit(func(f *flag.Flag) { set[f.Name] = true })
		o.rounds, o.duration = 1, 2*time.Second
		if !set["results"] {
			o.results = filepath.Join(o.work, "results-quick.json")
		}
		if !set["doc"] {
			o.doc = filepath.Join(o.work, "benchmarks-quick.md")
		}
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, o); err != nil {
		log.Print(err)
		os.Exit(1)
	}
}

func run(ctx context.Context, o options) error {
	if o.rounds < 1 {
		return fmt.Errorf("bench: -rounds %d: at least 1", o.rounds)
	}
	work, err := filepath.Abs(o.work)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(work, 0o755); err != nil {
		return err
	}
	env, err := setup(ctx, work, !o.noInstall)
	if err != nil {
		return err
	}
	if o.setupOnly {
		return nil
	}
	start := time.Now()
	res, err := measureAll(ctx, env, o)
	if err != nil {
		return err
	}
	res.Meta.Elapsed = time.Since(start).Round(time.Second).String()
	if err := writeResults(o.results, res); err != nil {
		return err
	}
	if err := writeDoc(o.doc, res); err != nil {
		return err
	}
	log.Printf("wrote %s and %s in %s", o.results, o.doc, res.Meta.Elapsed)
	if n := res.failures(); n > 0 {
		return fmt.Errorf("bench: %d failed requests (see %s): every request must succeed", n, o.results)
	}
	return nil
}
