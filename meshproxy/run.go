package meshproxy

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/mesh-dev/mesh/authz"
	"github.com/mesh-dev/mesh/authz/api/v1alpha1"
	"github.com/mesh-dev/mesh/authz/audit"
	identityv1 "github.com/mesh-dev/mesh/identity/api/v1"
	"github.com/mesh-dev/mesh/identity/source"
	"github.com/mesh-dev/mesh/proxy"
	"github.com/mesh-dev/mesh/proxy/normalize"
	"github.com/mesh-dev/mesh/proxy/probe"
)

// runOptions are mesh-proxy run's flags, as given.
type runOptions struct {
	trustDomain, identityAddr, controllerID, bundleFile, tokenFile string
	inMode, outMode, appProbes, podIP                              string
	adminPort, maxConns, checkpointEvery                           int
	destinations, policyFile, defaultPolicy                        string
	podNS, podName, podLabels, podPorts, auditLog                  string
	opaquePorts, portProtocols                                     string
	pathNorm                                                       normalize.Mode
	underscores                                                    normalize.UnderscoreAction
	logAllows                                                      bool
	sampleAllows                                                   uint64
	idleTimeout, checkpointInterval                                time.Duration
}

func (o *runOptions) addFlags(f *pflag.FlagSet) {
	f.StringVar(&o.trustDomain, "trust-domain", "cluster.local", "the mesh's trust domain")
	f.StringVar(&o.identityAddr, "identity-addr", "", "host:port of the identity service")
	f.StringVar(&o.controllerID, "controller-id", "spiffe://cluster.local/ns/mesh-system/sa/mesh-controller", "SPIFFE ID the identity service must present")
	f.StringVar(&o.bundleFile, "bundle", "", "PEM trust bundle to verify the identity service with at start")
	f.StringVar(&o.tokenFile, "token-file", "/var/run/secrets/mesh/tokens/identity-token", "projected ServiceAccount token")
	f.StringVar(&o.inMode, "inbound-mode", string(proxy.Strict), "strict or permissive")
	f.StringVar(&o.outMode, "outbound-mode", string(proxy.Permissive), "strict or permissive")
	f.IntVar(&o.adminPort, "admin-port", proxy.DefaultAdminPort, "admin port")
	f.StringVar(&o.appProbes, "app-probes", os.Getenv("MESH_APP_PROBES"), `the app's original kubelet probes, served on the admin port at /app-health/<container>/<livez|readyz|startupz> (JSON: {"/app-health/web/readyz": {"httpGet": {"path": "/healthz", "port": 8080}}})`)
	f.StringVar(&o.podIP, "pod-ip", os.Getenv("POD_IP"), "this pod's IP, where the app probes connect")
	f.StringVar(&o.portProtocols, "port-protocols", "", "what the app's ports speak, port=http|grpc|opaque,...; other ports are detected, and on ports a policy reads as HTTP anything else is refused")
	f.StringVar(&o.opaquePorts, "opaque-ports", "", "comma-separated inbound ports never inspected for HTTP (server-first protocols); short for --port-protocols PORT=opaque")
	f.TextVar(&o.pathNorm, "path-normalization", normalize.DefaultMode, "how request paths are normalised before authorization: NONE, BASE, MERGE_SLASHES or DECODE_AND_MERGE_SLASHES")
	f.TextVar(&o.underscores, "headers-with-underscores", normalize.DefaultUnderscoreAction, "request headers with '_' in their names: reject (400), drop, or allow")
	f.IntVar(&o.maxConns, "max-connections", 10000, "connections served at once, inbound and outbound; more are closed and counted")
	f.DurationVar(&o.idleTimeout, "idle-timeout", time.Hour, "close opaque TCP connections and upgraded streams idle this long")
	f.StringVar(&o.destinations, "destinations", "", "static destinations until the controller's watch lands: ip:port=spiffe-id,...")
	f.StringVar(&o.policyFile, "policies", "", "AuthorizationPolicy YAML to enforce, until the controller streams them; empty: the default only")
	f.StringVar(&o.defaultPolicy, "default-policy", string(authz.DefaultAllowMesh), "deny, allow-mesh, allow-same-namespace or allow-all")
	f.StringVar(&o.podNS, "pod-namespace", os.Getenv("POD_NAMESPACE"), "this pod's namespace")
	f.StringVar(&o.podName, "pod-name", os.Getenv("POD_NAME"), "this pod's name")
	f.StringVar(&o.podLabels, "pod-labels", "", "this pod's labels, k=v,...")
	f.StringVar(&o.podPorts, "container-ports", "", "this pod's named container ports, name=port,...")
	f.StringVar(&o.auditLog, "audit-log", "-", "where audit records go: a file path, or - for standard output")
	f.BoolVar(&o.logAllows, "audit-log-allows", false, "audit allowed requests too")
	f.Uint64Var(&o.sampleAllows, "audit-sample-allows", 1, "with --audit-log-allows, audit one allowed request in N")
	f.IntVar(&o.checkpointEvery, "audit-checkpoint-every", audit.DefaultCheckpointEvery, "sign the audit chain's head at least every N records")
	f.DurationVar(&o.checkpointInterval, "audit-checkpoint-interval", audit.DefaultCheckpointInterval, "and at least this soon after a record not yet covered")
}

func runCmd() *cobra.Command {
	var o runOptions
	cmd := &cobra.Command{
		Use:   "run",
		Short: "Run the proxy",
		Args:  cobra.NoArgs,
		RunE:  func(cmd *cobra.Command, _ []string) error { return run(cmd.Context(), &o) },
	}
	o.addFlags(cmd.Flags())
	return cmd
}

// settings are the flags checked and parsed: everything run needs that
// does not touch the network or the disk.
type settings struct {
	td     spiffeid.TrustDomain
	ctlID  spiffeid.ID
	table  *authz.Table
	health http.Handler
	proxy  proxy.Config
}

// parse checks every flag before anything is started, so that a bad one
// is reported, naming the flag, and changes nothing.
func (o *runOptions) parse() (*settings, error) {
	var s settings
	var err error
	if s.td, err = spiffeid.TrustDomainFromString(o.trustDomain); err != nil {
		return nil, fmt.Errorf("--trust-domain: %w", err)
	}
	if o.identityAddr == "" || o.bundleFile == "" || o.tokenFile == "" {
		return nil, fmt.Errorf("no SVID source configured: --identity-addr, --bundle and --token-file are required")
	}
	if s.ctlID, err = spiffeid.FromString(o.controllerID); err != nil {
		return nil, fmt.Errorf("--controller-id: %w", err)
	}
	dests, err := parseDestinations(o.destinations)
	if err != nil {
		return nil, err
	}
	protocols, err := parseProtocols(o.portProtocols, o.opaquePorts)
	if err != nil {
		return nil, err
	}
	if o.appProbes != "" {
		probers, err := probe.Parse([]byte(o.appProbes))
		if err != nil {
			return nil, fmt.Errorf("--app-probes (MESH_APP_PROBES): %w", err)
		}
		ip, err := netip.ParseAddr(o.podIP)
		if err != nil {
			return nil, fmt.Errorf("--pod-ip (POD_IP) is needed to run the app probes: %w", err)
		}
		if s.health, err = probe.New(probe.Config{Probers: probers, Target: ip}); err != nil {
			return nil, err
		}
	}
	if s.table, err = o.compile(s.td); err != nil {
		return nil, err
	}
	s.proxy = proxy.Config{
		TrustDomain: s.td, Destinations: dests,
		InboundMode: proxy.Mode(o.inMode), OutboundMode: proxy.Mode(o.outMode),
		AdminAddr: fmt.Sprintf(":%d", o.adminPort), AppHealth: s.health,
		PortProtocols: protocols, PathNormalization: o.pathNorm, HeadersWithUnderscores: o.underscores,
		MaxConnections: o.maxConns, IdleTimeout: o.idleTimeout,
		Registerer: prometheus.DefaultRegisterer,
	}
	return &s, nil
}

// compile compiles this pod's table from the static policies.
func (o *runOptions) compile(td spiffeid.TrustDomain) (*authz.Table, error) {
	mode, err := authz.ParseDefaultMode(o.defaultPolicy)
	if err != nil {
		return nil, fmt.Errorf("--default-policy: %w", err)
	}
	if o.podNS == "" || o.podName == "" {
		return nil, fmt.Errorf("--pod-namespace and --pod-name (or POD_NAMESPACE and POD_NAME) are required")
	}
	var policies []v1alpha1.AuthorizationPolicy
	if o.policyFile != "" {
		b, err := os.ReadFile(o.policyFile)
		if err != nil {
			return nil, fmt.Errorf("--policies: %w", err)
		}
		if policies, err = authz.ParsePolicies(b); err != nil {
			return nil, fmt.Errorf("--policies %s: %w", o.policyFile, err)
		}
	}
	lbls, err := parsePairs(o.podLabels, "--pod-labels")
	if err != nil {
		return nil, err
	}
	named, err := parsePairs(o.podPorts, "--container-ports")
	if err != nil {
		return nil, err
	}
	portMap := map[string]uint16{}
	for name, v := range named {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > 65535 {
			return nil, fmt.Errorf("--container-ports: %s=%s is not a port", name, v)
		}
		portMap[name] = uint16(n)
	}
	return authz.Compile(authz.Input{TrustDomain: td, MeshDefault: mode, Policies: policies,
		Workload: authz.Workload{Namespace: o.podNS, Pod: o.podName, Labels: lbls, Ports: portMap}})
}

// run starts the SVID source, the audit writer and the proxy, and stops
// them in the reverse order: the audit writer signs its last checkpoint
// while the SVID is still there.
func run(ctx context.Context, o *runOptions) error {
	s, err := o.parse()
	if err != nil {
		return err
	}
	log := slog.New(slog.NewJSONHandler(os.Stderr, nil))
	bundle, err := x509bundle.Load(s.td, o.bundleFile)
	if err != nil {
		return fmt.Errorf("--bundle: %w", err)
	}
	conn, err := grpc.NewClient(o.identityAddr, grpc.WithTransportCredentials(credentials.NewTLS(tlsconfig.TLSClientConfig(bundle, tlsconfig.AuthorizeID(s.ctlID)))))
	if err != nil {
		return err
	}
	defer conn.Close()
	src, err := source.New(ctx, source.Config{
		Certifier: identityv1.NewIdentityClient(conn), TrustDomain: s.td, Logger: log,
		Token: func() (string, error) { b, err := os.ReadFile(o.tokenFile); return strings.TrimSpace(string(b)), err },
	})
	if err != nil {
		return err
	}
	defer src.Close()

	out := os.Stdout
	if o.auditLog != "-" {
		f, err := os.OpenFile(o.auditLog, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o640)
		if err != nil {
			return fmt.Errorf("--audit-log: %w", err)
		}
		defer f.Close()
		out = f
	}
	// The proxy signs checkpoints of its audit chain with its own SVID key.
	auditW, err := audit.New(audit.Config{
		Out: out, Stream: fmt.Sprintf("%s/%s@%s", o.podNS, o.podName, time.Now().UTC().Format(time.RFC3339Nano)),
		SVIDs: src, CheckpointEvery: o.checkpointEvery, CheckpointInterval: o.checkpointInterval,
		Logger: log, Registerer: prometheus.DefaultRegisterer,
	})
	if err != nil {
		return err
	}
	enf := authz.NewEnforcer(s.table, auditW)
	enf.LogAllows, enf.SampleAllows = o.logAllows, o.sampleAllows
	for _, w := range s.table.Warnings() {
		log.Warn("policy", "warning", w)
	}
	if err := prometheus.DefaultRegisterer.Register(enf.WarningsMetric()); err != nil {
		return err
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

	cfg := s.proxy
	cfg.Identity, cfg.Authorizer, cfg.Logger = src, enf, log
	p, err := proxy.New(cfg)
	if err != nil {
		return err
	}
	return p.Run(ctx)
}
