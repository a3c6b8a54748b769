// Command mesh-proxy is mesh's sidecar: `mesh-proxy init` installs the
// pod's interception rules (run as the init container, with NET_ADMIN and
// NET_RAW only), `mesh-proxy run` is the proxy.
package main

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"

	"github.com/spf13/cobra"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"

	identityv1 "github.com/mesh-dev/mesh/identity/api/v1"
	"github.com/mesh-dev/mesh/identity/source"
	"github.com/mesh-dev/mesh/proxy"
	"github.com/mesh-dev/mesh/proxy/intercept"
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
		cfg                            intercept.Config
		inSkip, outSkip, outCIDRs, ipt string
		dryRun                         bool
	)
	cmd := &cobra.Command{
		Use:   "init",
		Short: "Install the pod's iptables interception rules (idempotent)",
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
			if dryRun {
				plan, err := cfg.Plan()
				if err != nil {
					return err
				}
				fmt.Print(plan)
				return nil
			}
			return intercept.Apply(cmd.Context(), &cfg)
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
	f.BoolVar(&cfg.IPv6, "ipv6", false, "also install the rules with ip6tables")
	f.StringVar(&ipt, "iptables", "iptables", "iptables binary: iptables, iptables-nft or iptables-legacy")
	f.BoolVar(&dryRun, "dry-run", false, "print the rules instead of installing them")
	return cmd
}

func runCmd() *cobra.Command {
	var (
		trustDomain, identityAddr, controllerID, bundleFile, tokenFile string
		inMode, outMode, probes, probeSources                          string
		adminPort                                                      int
		destinations                                                   string
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
			pr, err := parseProbes(probes)
			if err != nil {
				return err
			}
			var sources []netip.Addr
			for _, s := range strings.Split(probeSources, ",") {
				if s = strings.TrimSpace(s); s == "" {
					continue
				}
				a, err := netip.ParseAddr(s)
				if err != nil {
					return fmt.Errorf("--probe-sources: %w", err)
				}
				sources = append(sources, a)
			}
			p, err := proxy.New(proxy.Config{
				Identity: src, TrustDomain: td, Destinations: dests,
				InboundMode: proxy.Mode(inMode), OutboundMode: proxy.Mode(outMode),
				AdminAddr: fmt.Sprintf("0.0.0.0:%d", adminPort), Probes: pr, ProbeSources: sources, Logger: log,
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
	f.StringVar(&probes, "probes", "", "comma-separated kubelet probes allowed in strict mode, as port:path (8080:/healthz)")
	f.StringVar(&probeSources, "probe-sources", "", "comma-separated node addresses kubelet probes come from")
	f.StringVar(&destinations, "destinations", "", "static destinations until the controller's watch lands: ip:port=spiffe-id,...")
	return cmd
}

func parseProbes(s string) ([]proxy.Probe, error) {
	var out []proxy.Probe
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f == "" {
			continue
		}
		port, path, ok := strings.Cut(f, ":")
		n, err := strconv.Atoi(port)
		if !ok || err != nil || n <= 0 || n > 65535 || !strings.HasPrefix(path, "/") {
			return nil, fmt.Errorf("--probes: %q is not port:/path", f)
		}
		out = append(out, proxy.Probe{Port: uint16(n), Path: path})
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
