// Command mesh-proxy is mesh's sidecar: `mesh-proxy init` installs the
// pod's interception rules (run as the init container, with NET_ADMIN and
// NET_RAW only), `mesh-proxy run` is the proxy.
package main

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"net/netip"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spf13/cobra"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"

	"github.com/mesh-dev/mesh/authz"
	"github.com/mesh-dev/mesh/authz/api/v1alpha1"
	"github.com/mesh-dev/mesh/authz/audit"
	identityv1 "github.com/mesh-dev/mesh/identity/api/v1"
	"github.com/mesh-dev/mesh/identity/source"
	"github.com/mesh-dev/mesh/proxy"
	"github.com/mesh-dev/mesh/proxy/intercept"
	"github.com/mesh-dev/mesh/proxy/normalize"
	"github.com/mesh-dev/mesh/proxy/probe"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := root().ExecuteContext(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "mesh-proxy:", err)
		os.Exit(1)
	}
}

func root() *cobra.Command {
	cmd := &cobra.Command{Use: "mesh-proxy", Short: "mesh's sidecar proxy", SilenceUsage: true, SilenceErrors: true}
	cmd.AddCommand(initCmd(), runCmd())
	return cmd
}

func initCmd() *cobra.Command {
	var (
		cfg                                  intercept.Config
		inSkip, outSkip, outCIDRs, ipt, ipv6 string
		dryRun                               bool
	)
	cmd := &cobra.Command{
		Use:   "init",
		Short: "Install the pod's iptables interception rules (idempotent)",
		// No arguments: "--ipv6 on" must not parse as --ipv6 plus a stray "on".
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var err error
			if cfg.InboundSkipPorts, err = intercept.ParsePorts(inSkip); err != nil {
				return err
			}
			if cfg.OutboundSkipPorts, err = intercept.ParsePorts(outSkip); err != nil {
				return err
			}
			if cfg.OutboundSkipCIDRs, err = intercept.ParseCIDRs(outCIDRs); err != nil {
				return err
			}
			cfg.IPTables = ipt
			cfg.IPv6 = intercept.IPv6Mode(ipv6)
			if dryRun {
				plan, err := cfg.Plan()
				if err != nil {
					return err
				}
				fmt.Print(plan)
				return nil
			}
			res, err := intercept.Apply(cmd.Context(), &cfg)
			if err != nil {
				return err
			}
			fmt.Print(res)
			return nil
		},
	}
	f := cmd.Flags()
	f.IntVar(&cfg.ProxyUID, "proxy-uid", 1337, "UID the proxy runs as; its traffic is not intercepted")
	f.IntVar(&cfg.InboundPort, "inbound-port", proxy.DefaultInboundPort, "proxy inbound port")
	f.IntVar(&cfg.OutboundPort, "outbound-port", proxy.DefaultOutboundPort, "proxy outbound port")
	f.IntVar(&cfg.AdminPort, "admin-port", proxy.DefaultAdminPort, "proxy admin port (never intercepted)")
	f.StringVar(&inSkip, "inbound-skip-ports", "", "comma-separated inbound ports not intercepted")
	f.StringVar(&outSkip, "outbound-skip-ports", "", "comma-separated outbound ports not intercepted")
	f.StringVar(&outCIDRs, "outbound-skip-cidrs", "", "comma-separated destination CIDRs not intercepted")
	f.StringVar(&ipv6, "ipv6", string(intercept.IPv6Auto), "IPv6: auto (intercept it if the namespace has it; where ip6tables cannot, drop IPv6 TCP or disable IPv6; else fail) or on (intercept it or fail)")
	f.Lookup("ipv6").NoOptDefVal = string(intercept.IPv6On) // a bare --ipv6 keeps its old meaning
	f.StringVar(&ipt, "iptables", "iptables", "iptables binary: iptables, iptables-nft or iptables-legacy")
	f.StringVar(&cfg.IP6Tables, "ip6tables", "", "ip6tables binary (default: derived from --iptables, e.g. ip6tables-nft)")
	f.BoolVar(&dryRun, "dry-run", false, "print the rules instead of installing them")
	return cmd
}

func runCmd() *cobra.Command {
	var (
		trustDomain, identityAddr, controllerID, bundleFile, tokenFile string
		inMode, outMode, appProbes, podIP                              string
		adminPort, maxConns                                            int
		destinations                                                   string
		policyFile, defaultPolicy, podNS, podName, podLabels, podPorts string
		auditLog                                                       string
		logAllows                                                      bool
		opaquePorts, portProtocols, pathNorm, underscores              string
		sampleAllows                                                   uint64
		idleTimeout, checkpointInterval                                time.Duration
		checkpointEvery                                                int
	)
	cmd := &cobra.Command{
		Use:   "run",
		Short: "Run the proxy",
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			log := slog.New(slog.NewJSONHandler(os.Stderr, nil))
			td, err := spiffeid.TrustDomainFromString(trustDomain)
			if err != nil {
				return fmt.Errorf("--trust-domain: %w", err)
			}
			if identityAddr == "" || bundleFile == "" || tokenFile == "" {
				return fmt.Errorf("no SVID source configured: --identity-addr, --bundle and --token-file are required")
			}
			bundle, err := x509bundle.Load(td, bundleFile)
			if err != nil {
				return fmt.Errorf("--bundle: %w", err)
			}
			ctlID, err := spiffeid.FromString(controllerID)
			if err != nil {
				return fmt.Errorf("--controller-id: %w", err)
			}
			conn, err := grpc.NewClient(identityAddr, grpc.WithTransportCredentials(credentials.NewTLS(tlsconfig.TLSClientConfig(bundle, tlsconfig.AuthorizeID(ctlID)))))
			if err != nil {
				return err
			}
			defer conn.Close()
			src, err := source.New(ctx, source.Config{
				Certifier: identityv1.NewIdentityClient(conn), TrustDomain: td, Logger: log,
				Token: func() (string, error) { b, err := os.ReadFile(tokenFile); return strings.TrimSpace(string(b)), err },
			})
			if err != nil {
				return err
			}
			defer src.Close()
			dests, err := parseDestinations(destinations)
			if err != nil {
				return err
			}
			protocols, err := parseProtocols(portProtocols, opaquePorts)
			if err != nil {
				return err
			}
			norm, err := normalize.ParseMode(pathNorm)
			if err != nil {
				return fmt.Errorf("--path-normalization: %w", err)
			}
			us, err := normalize.ParseUnderscoreAction(underscores)
			if err != nil {
				return fmt.Errorf("--headers-with-underscores: %w", err)
			}
			var health http.Handler
			if appProbes != "" {
				probers, err := probe.Parse([]byte(appProbes))
				if err != nil {
					return fmt.Errorf("--app-probes (MESH_APP_PROBES): %w", err)
				}
				ip, err := netip.ParseAddr(podIP)
				if err != nil {
					return fmt.Errorf("--pod-ip (POD_IP) is needed to run the app probes: %w", err)
				}
				if health, err = probe.New(probe.Config{Probers: probers, Target: ip}); err != nil {
					return err
				}
			}
			enf, auditW, closeAudit, err := enforcer(td, policyFile, defaultPolicy, podNS, podName, podLabels, podPorts, auditLog,
				audit.Config{SVIDs: src, CheckpointEvery: checkpointEvery, CheckpointInterval: checkpointInterval, Logger: log})
			if err != nil {
				return err
			}
			defer closeAudit()
			for _, w := range enf.Table().Warnings() {
				log.Warn("policy", "warning", w)
			}
			if err := prometheus.DefaultRegisterer.Register(enf.WarningsMetric()); err != nil {
				return err
			}
			enf.LogAllows, enf.SampleAllows = logAllows, sampleAllows
			auditCtx, stopAudit := context.WithCancel(context.Background())
			auditDone := make(chan error, 1)
			go func() { auditDone <- auditW.Run(auditCtx) }()
			defer func() {
				stopAudit()
				if err := <-auditDone; err != nil {
					log.Error("audit log", "err", err)
				}
			}()
			p, err := proxy.New(proxy.Config{
				Identity: src, TrustDomain: td, Destinations: dests, Authorizer: enf,
				InboundMode: proxy.Mode(inMode), OutboundMode: proxy.Mode(outMode),
				AdminAddr: fmt.Sprintf(":%d", adminPort), AppHealth: health,
				PortProtocols: protocols, PathNormalization: norm, HeadersWithUnderscores: us,
				MaxConnections: maxConns, IdleTimeout: idleTimeout,
				Logger: log, Registerer: prometheus.DefaultRegisterer,
			})
			if err != nil {
				return err
			}
			return p.Run(ctx)
		},
	}
	f := cmd.Flags()
	f.StringVar(&trustDomain, "trust-domain", "cluster.local", "the mesh's trust domain")
	f.StringVar(&identityAddr, "identity-addr", "", "host:port of the identity service")
	f.StringVar(&controllerID, "controller-id", "spiffe://cluster.local/ns/mesh-system/sa/mesh-controller", "SPIFFE ID the identity service must present")
	f.StringVar(&bundleFile, "bundle", "", "PEM trust bundle to verify the identity service with at start")
	f.StringVar(&tokenFile, "token-file", "/var/run/secrets/mesh/tokens/identity-token", "projected ServiceAccount token")
	f.StringVar(&inMode, "inbound-mode", string(proxy.Strict), "strict or permissive")
	f.StringVar(&outMode, "outbound-mode", string(proxy.Permissive), "strict or permissive")
	f.IntVar(&adminPort, "admin-port", proxy.DefaultAdminPort, "admin port")
	f.StringVar(&appProbes, "app-probes", os.Getenv("MESH_APP_PROBES"), `the app's original kubelet probes, served on the admin port at /app-health/<container>/<livez|readyz|startupz> (JSON: {"/app-health/web/readyz": {"httpGet": {"path": "/healthz", "port": 8080}}})`)
	f.StringVar(&podIP, "pod-ip", os.Getenv("POD_IP"), "this pod's IP, where the app probes connect")
	f.StringVar(&portProtocols, "port-protocols", "", "what the app's ports speak, port=http|grpc|opaque,...; other ports are detected, and on ports a policy reads as HTTP anything else is refused")
	f.StringVar(&pathNorm, "path-normalization", normalize.DefaultMode.String(), "how request paths are normalised before authorization: NONE, BASE, MERGE_SLASHES or DECODE_AND_MERGE_SLASHES")
	f.StringVar(&underscores, "headers-with-underscores", normalize.DefaultUnderscoreAction.String(), "request headers with '_' in their names: reject (400), drop, or allow")
	f.IntVar(&maxConns, "max-connections", 10000, "connections served at once, inbound and outbound; more are closed and counted")
	f.DurationVar(&idleTimeout, "idle-timeout", time.Hour, "close opaque TCP connections and upgraded streams idle this long")
	f.IntVar(&checkpointEvery, "audit-checkpoint-every", audit.DefaultCheckpointEvery, "sign the audit chain's head at least every N records")
	f.DurationVar(&checkpointInterval, "audit-checkpoint-interval", audit.DefaultCheckpointInterval, "and at least this soon after a record not yet covered")
	f.StringVar(&destinations, "destinations", "", "static destinations until the controller's watch lands: ip:port=spiffe-id,...")
	f.StringVar(&policyFile, "policies", "", "AuthorizationPolicy YAML to enforce, until the controller streams them; empty: the default only")
	f.StringVar(&defaultPolicy, "default-policy", string(authz.DefaultAllowMesh), "deny, allow-mesh, allow-same-namespace or allow-all")
	f.StringVar(&podNS, "pod-namespace", os.Getenv("POD_NAMESPACE"), "this pod's namespace")
	f.StringVar(&podName, "pod-name", os.Getenv("POD_NAME"), "this pod's name")
	f.StringVar(&podLabels, "pod-labels", "", "this pod's labels, k=v,...")
	f.StringVar(&podPorts, "container-ports", "", "this pod's named container ports, name=port,...")
	f.StringVar(&opaquePorts, "opaque-ports", "", "comma-separated inbound ports never inspected for HTTP (server-first protocols); short for --port-protocols PORT=opaque")
	f.StringVar(&auditLog, "audit-log", "-", "where audit records go: a file path, or - for standard output")
	f.BoolVar(&logAllows, "audit-log-allows", false, "audit allowed requests too")
	f.Uint64Var(&sampleAllows, "audit-sample-allows", 1, "with --audit-log-allows, audit one allowed request in N")
	return cmd
}

// enforcer compiles this pod's table from the static policies and opens
// the audit log.
func enforcer(td spiffeid.TrustDomain, policyFile, defaultPolicy, ns, pod, labels, ports, auditLog string, acfg audit.Config) (*authz.Enforcer, *audit.Writer, func(), error) {
	mode, err := authz.ParseDefaultMode(defaultPolicy)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("--default-policy: %w", err)
	}
	if ns == "" || pod == "" {
		return nil, nil, nil, fmt.Errorf("--pod-namespace and --pod-name (or POD_NAMESPACE and POD_NAME) are required")
	}
	var policies []v1alpha1.AuthorizationPolicy
	if policyFile != "" {
		b, err := os.ReadFile(policyFile)
		if err != nil {
			return nil, nil, nil, fmt.Errorf("--policies: %w", err)
		}
		if policies, err = authz.ParsePolicies(b); err != nil {
			return nil, nil, nil, fmt.Errorf("--policies %s: %w", policyFile, err)
		}
	}
	lbls, err := parsePairs(labels, "--pod-labels")
	if err != nil {
		return nil, nil, nil, err
	}
	named, err := parsePairs(ports, "--container-ports")
	if err != nil {
		return nil, nil, nil, err
	}
	portMap := map[string]uint16{}
	for name, v := range named {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > 65535 {
			return nil, nil, nil, fmt.Errorf("--container-ports: %s=%s is not a port", name, v)
		}
		portMap[name] = uint16(n)
	}
	tbl, err := authz.Compile(authz.Input{TrustDomain: td, MeshDefault: mode, Policies: policies,
		Workload: authz.Workload{Namespace: ns, Pod: pod, Labels: lbls, Ports: portMap}})
	if err != nil {
		return nil, nil, nil, err
	}
	out, closeOut := os.Stdout, func() {}
	if auditLog != "-" {
		f, err := os.OpenFile(auditLog, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o640)
		if err != nil {
			return nil, nil, nil, fmt.Errorf("--audit-log: %w", err)
		}
		out, closeOut = f, func() { f.Close() }
	}
	// The proxy signs checkpoints of its audit chain with its own SVID key.
	acfg.Out, acfg.Registerer = out, prometheus.DefaultRegisterer
	acfg.Stream = fmt.Sprintf("%s/%s@%s", ns, pod, time.Now().UTC().Format(time.RFC3339Nano))
	w, err := audit.New(acfg)
	if err != nil {
		closeOut()
		return nil, nil, nil, err
	}
	return authz.NewEnforcer(tbl, w), w, closeOut, nil
}

func parsePairs(s, flag string) (map[string]string, error) {
	out := map[string]string{}
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f == "" {
			continue
		}
		k, v, ok := strings.Cut(f, "=")
		if !ok || k == "" {
			return nil, fmt.Errorf("%s: %q is not key=value", flag, f)
		}
		out[k] = v
	}
	return out, nil
}

// parseProtocols reads --port-protocols (port=http|grpc|opaque,...) and
// --opaque-ports.
func parseProtocols(protocols, opaque string) (map[uint16]proxy.AppProtocol, error) {
	out := map[uint16]proxy.AppProtocol{}
	pairs, err := parsePairs(protocols, "--port-protocols")
	if err != nil {
		return nil, err
	}
	for port, proto := range pairs {
		ports, err := intercept.ParsePorts(port)
		if err != nil || len(ports) != 1 {
			return nil, fmt.Errorf("--port-protocols: %q is not a port", port)
		}
		p, err := proxy.ParseAppProtocol(proto)
		if err != nil {
			return nil, fmt.Errorf("--port-protocols: port %s: %w", port, err)
		}
		out[uint16(ports[0])] = p
	}
	ops, err := intercept.ParsePorts(opaque)
	if err != nil {
		return nil, fmt.Errorf("--opaque-ports: %w", err)
	}
	for _, o := range ops {
		if p, ok := out[uint16(o)]; ok && p != proxy.ProtocolOpaque {
			return nil, fmt.Errorf("--opaque-ports: port %d is declared %s in --port-protocols", o, p)
		}
		out[uint16(o)] = proxy.ProtocolOpaque
	}
	return out, nil
}

func parseDestinations(s string) (proxy.StaticDestinations, error) {
	out := proxy.StaticDestinations{}
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f == "" {
			continue
		}
		addr, id, ok := strings.Cut(f, "=")
		ap, err := netip.ParseAddrPort(addr)
		if !ok || err != nil {
			return nil, fmt.Errorf("--destinations: %q is not ip:port=spiffe-id", f)
		}
		sid, err := spiffeid.FromString(id)
		if err != nil {
			return nil, fmt.Errorf("--destinations: %q: %w", f, err)
		}
		out[ap] = sid
	}
	return out, nil
}
