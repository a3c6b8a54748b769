package meshproxy

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/mesh-dev/mesh/authz"
	"github.com/mesh-dev/mesh/authz/audit"
	"github.com/mesh-dev/mesh/identity/filesource"
	"github.com/mesh-dev/mesh/proxy"
)

func standaloneCommand() command {
	return command{
		name:  "standalone",
		short: "Run the proxy outside Kubernetes: identity from files, static listeners, no iptables",
		long: `standalone runs the sidecar's proxy on a VM or bare metal. Its SVID, key and
trust bundle are PEM files, read again when they change; its inbound side
terminates mesh mTLS and forwards to one address under the policy of a
file in the AuthorizationPolicy CRD's YAML; each outbound listener sends
its connections over mesh mTLS to one destination, which must present the
configured SPIFFE ID. See docs/proxy.md, "Standalone mode".`,
		flags: func(f *flag.FlagSet) func(ctx context.Context, stdout, stderr io.Writer) error {
			var config string
			f.StringVar(&config, "config", "", "the configuration file (YAML); required")
			return func(ctx context.Context, stdout, stderr io.Writer) error {
				if config == "" {
					return &UsageError{Command: "standalone", Err: errors.New("--config is required")}
				}
				return runStandalone(ctx, config, stdout, stderr)
			}
		},
	}
}

// runStandalone runs the proxy of the file at path until ctx ends. The
// log goes to logOut, audit records with auditLog "-" to stdout. Each run
// has its own metrics registry, served on the admin port.
func runStandalone(ctx context.Context, path string, stdout, logOut io.Writer) error {
	if ctx == nil {
		ctx = context.Background()
	}
	s, err := loadStandalone(path)
	if err != nil {
		return err
	}
	log := slog.New(slog.NewJSONHandler(logOut, nil))
	for _, w := range s.policyWarnings {
		log.Warn("policy", "warning", w)
	}
	src, err := filesource.New(filesource.Config{CertFile: s.cert, KeyFile: s.key, BundleFile: s.bundle, TrustDomain: s.td, Logger: log})
	if err != nil {
		return fmt.Errorf("standalone: %s: identity: %w", path, err)
	}
	defer src.Close()

	reg := prometheus.NewRegistry()
	for _, c := range []prometheus.Collector{collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{})} {
		if err := reg.Register(c); err != nil {
			return fmt.Errorf("standalone: metrics: %w", err)
		}
	}
	out := stdout
	if s.auditLog != "-" {
		f, err := os.OpenFile(s.auditLog, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o640)
		if err != nil {
			return fmt.Errorf("standalone: %s: auditLog: %w", path, err)
		}
		defer f.Close()
		out = f
	}
	// As in the sidecar: the audit chain's checkpoints are signed with the
	// proxy's own SVID.
	auditW, err := audit.New(audit.Config{
		Out: out, Stream: fmt.Sprintf("%s/%s@%s", s.namespace, s.name, time.Now().UTC().Format(time.RFC3339Nano)),
		SVIDs: src, Logger: log, Registerer: reg,
	})
	if err != nil {
		return err
	}
	enf := authz.NewEnforcer(s.table, auditW)
	if s.table == nil {
		// Outbound only: nothing is decided, yet the enforcer must be
		// ready for the proxy to be.
		t, err := authz.Compile(authz.Input{TrustDomain: s.td, MeshDefault: authz.DefaultDeny})
		if err != nil {
			return err
		}
		enf.Swap(t)
	}
	if err := reg.Register(enf.WarningsMetric()); err != nil {
		return fmt.Errorf("standalone: metrics: %w", err)
	}
	auditCtx, stopAudit := context.WithCancel(context.Background())
	auditDone := make(chan error, 1)
	go func() { auditDone <- auditW.Run(auditCtx) }()
	defer func() {
		stopAudit()
		if err := <-auditDone; err != nil {
			log.Error("audit log", "err", err)
		}
	}()

	socks := &sockets{cfg: s}
	cfg := proxy.Config{
		Identity: src, TrustDomain: s.td, Destinations: s.destinations, Authorizer: enf,
		InboundMode: proxy.Strict, OutboundMode: proxy.Strict,
		InboundAddr: noInbound, OutboundAddr: outboundListeners, AdminAddr: "-",
		PortProtocols: s.protocols,
		Listen:        socks.listen, OriginalDst: socks.originalDst,
		Registerer: reg, Gatherer: reg, Logger: log,
	}
	if s.inbound != nil {
		cfg.InboundAddr = s.inbound.listen
		cfg.AppHost = s.inbound.forward.Addr().String()
	}
	if s.admin != "" {
		cfg.AdminAddr = s.admin
	}
	if s.table != nil {
		info := fileInfo(s.table)
		cfg.Policy = func() *proxy.PolicyInfo { return info }
	}
	p, err := proxy.New(cfg)
	if err != nil {
		return err
	}
	return p.Run(ctx)
}
