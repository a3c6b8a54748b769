package meshproxy

import (
	"context"
	"crypto/x509"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"time"

	"sync/atomic"

	"github.com/mesh-dev/mesh/controlplane/client"
	"github.com/mesh-dev/mesh/internal/logconfig"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/resolver"
	"google.golang.org/grpc/resolver/manual"

	"github.com/mesh-dev/mesh/authz"
	"github.com/mesh-dev/mesh/authz/audit"
	identityv1 "github.com/mesh-dev/mesh/identity/api/v1"
	"github.com/mesh-dev/mesh/identity/source"
	"github.com/mesh-dev/mesh/proxy"
	"github.com/mesh-dev/mesh/proxy/normalize"
	"github.com/mesh-dev/mesh/proxy/probe"
	"github.com/mesh-dev/mesh/workloadapi"
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
	idleTimeout, checkpointInterval, pendingWait                   time.Duration
	workloadAPI                                                    workloadAPIOptions
	log                                                            logconfig.Config
}

func (o *runOptions) addFlags(f *flag.FlagSet) {
	o.log.AddFlags(f)
	f.StringVar(&o.trustDomain, "trust-domain", "cluster.local", "the mesh's trust domain")
	f.StringVar(&o.identityAddr, "identity-addr", "", "host:port of the controller (identity service and control-plane streams); a comma-separated list names several replicas, and the proxy moves to another when its own goes")
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
	f.StringVar(&o.destinations, "destinations", "", "static destinations instead of the controller's stream (tests and debugging; outside Kubernetes use mesh-proxy standalone): ip:port=spiffe-id,...; every other address is not meshed")
	f.StringVar(&o.policyFile, "policies", "", "AuthorizationPolicy YAML to enforce instead of the controller's stream (tests and debugging; outside Kubernetes use mesh-proxy standalone)")
	f.StringVar(&o.defaultPolicy, "default-policy", string(authz.DefaultAllowMesh), "with --policies: deny, allow-mesh, allow-same-namespace or allow-all (the controller decides it otherwise)")
	f.DurationVar(&o.pendingWait, "destination-wait", 5*time.Second, "how long a new outbound connection waits for the controller's first destinations before it is refused")
	f.StringVar(&o.podNS, "pod-namespace", os.Getenv("POD_NAMESPACE"), "this pod's namespace")
	f.StringVar(&o.podName, "pod-name", os.Getenv("POD_NAME"), "this pod's name")
	f.StringVar(&o.podLabels, "pod-labels", "", "this pod's labels, k=v,...")
	f.StringVar(&o.podPorts, "container-ports", "", "this pod's named container ports, name=port,...")
	f.StringVar(&o.auditLog, "audit-log", "-", "where audit records go: a file path (each line is copied to standard output too), or - for standard output only")
	f.BoolVar(&o.logAllows, "audit-log-allows", false, "audit allowed requests too")
	f.Uint64Var(&o.sampleAllows, "audit-sample-allows", 1, "with --audit-log-allows, audit one allowed request in N")
	f.IntVar(&o.checkpointEvery, "audit-checkpoint-every", audit.DefaultCheckpointEvery, "sign the audit chain's head at least every N records")
	f.DurationVar(&o.checkpointInterval, "audit-checkpoint-interval", audit.DefaultCheckpointInterval, "and at least this soon after a record not yet covered")
	o.workloadAPI.addFlags(f)
}

func runCommand() command {
	return command{
		name:  "run",
		short: "Run the proxy",
		flags: func(f *flag.FlagSet) func(ctx context.Context, _, _ io.Writer) error {
			var o runOptions
			o.addFlags(f)
			return func(ctx context.Context, _, _ io.Writer) error { return run(ctx, &o) }
		},
	}
}

// settings are the flags checked and parsed: everything run needs that
// does not touch the network or the disk.
type settings struct {
	td    spiffeid.TrustDomain
	ctlID spiffeid.ID
	table *authz.Table
	// static is what /policy says of table; nil without --policies.
	static *proxy.PolicyInfo
	health http.Handler
	proxy  proxy.Config
	// wapiUIDs may use the Workload API; nil if it is not served.
	wapiUIDs []uint32
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
	if o.podNS == "" || o.podName == "" {
		return nil, fmt.Errorf("--pod-namespace and --pod-name (or POD_NAMESPACE and POD_NAME) are required")
	}
	if s.table, s.static, err = o.compile(s.td); err != nil {
		return nil, err
	}
	if s.wapiUIDs, err = o.workloadAPI.parse(); err != nil {
		return nil, err
	}
	var d proxy.Destinations
	if o.destinations != "" {
		d = dests
	}
	s.proxy = proxy.Config{
		TrustDomain: s.td, Destinations: d,
		InboundMode: proxy.Mode(o.inMode), OutboundMode: proxy.Mode(o.outMode),
		AdminAddr: fmt.Sprintf(":%d", o.adminPort), AppHealth: s.health,
		PortProtocols: protocols, PathNormalization: o.pathNorm, HeadersWithUnderscores: o.underscores,
		MaxConnections: o.maxConns, IdleTimeout: o.idleTimeout,
		Registerer: prometheus.DefaultRegisterer,
	}
	return &s, nil
}

// compile compiles this pod's table from the static policies, and says
// which they are for /policy.
func (o *runOptions) compile(td spiffeid.TrustDomain) (*authz.Table, *proxy.PolicyInfo, error) {
	// The workload flags are checked whether or not --policies is given:
	// a typo must fail at start, not when a policy file is added.
	mode, err := authz.ParseDefaultMode(o.defaultPolicy)
	if err != nil {
		return nil, nil, fmt.Errorf("--default-policy: %w", err)
	}
	lbls, err := parsePairs(o.podLabels, "--pod-labels")
	if err != nil {
		return nil, nil, err
	}
	named, err := parsePairs(o.podPorts, "--container-ports")
	if err != nil {
		return nil, nil, err
	}
	portMap := map[string]uint16{}
	for name, v := range named {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > 65535 {
			return nil, nil, fmt.Errorf("--container-ports: %s=%s is not a port", name, v)
		}
		portMap[name] = uint16(n)
	}
	if o.policyFile == "" {
		return nil, nil, nil // the controller streams the policy
	}
	b, err := os.ReadFile(o.policyFile)
	if err != nil {
		return nil, nil, fmt.Errorf("--policies: %w", err)
	}
	policies, err := authz.ParsePolicies(b)
	if err != nil {
		return nil, nil, fmt.Errorf("--policies %s: %w", o.policyFile, err)
	}
	t, err := authz.Compile(authz.Input{TrustDomain: td, MeshDefault: mode, Policies: policies,
		Workload: authz.Workload{Namespace: o.podNS, Pod: o.podName, Labels: lbls, Ports: portMap}})
	if err != nil {
		return nil, nil, err
	}
	return t, fileInfo(t), nil
}

// run starts the SVID source, the audit writer and the proxy, and stops
// them in the reverse order: the audit writer signs its last checkpoint
// while the SVID is still there.
func run(ctx context.Context, o *runOptions) error {
	s, err := o.parse()
	if err != nil {
		return err
	}
	log, err := o.log.New(os.Stderr)
	if err != nil {
		return err
	}
	fileBundle, err := x509bundle.Load(s.td, o.bundleFile)
	if err != nil {
		return fmt.Errorf("--bundle: %w", err)
	}
	// The controller is verified with the file's bundle only until the
	// SVID source has one of its own: after a root rotation the file's may
	// no longer verify the controller.
	bundles := &liveBundle{file: fileBundle}
	target, resolverOpt := controllers(o.identityAddr)
	conn, err := grpc.NewClient(target, resolverOpt, reconnect, grpc.WithTransportCredentials(credentials.NewTLS(tlsconfig.TLSClientConfig(bundles, tlsconfig.AuthorizeID(s.ctlID)))))
	if err != nil {
		return err
	}
	defer conn.Close()
	svidConfig := source.Config{
		Certifier: identityv1.NewIdentityClient(conn), TrustDomain: s.td, Logger: log,
		Token: func() (string, error) { b, err := os.ReadFile(o.tokenFile); return strings.TrimSpace(string(b)), err },
	}
	src, err := source.New(ctx, svidConfig)
	if err != nil {
		return err
	}
	defer src.Close()
	bundles.src.Store(src)
	// The Workload API hands the app an SVID of its own, with a key of its
	// own, certified apart: the proxy's key, which also signs its audit
	// checkpoints, never leaves the proxy.
	var appSrc *source.Source
	if s.wapiUIDs != nil {
		appConfig := svidConfig
		appConfig.Logger, appConfig.App = log.With("svid", "workload-api"), true
		if appSrc, err = source.New(ctx, appConfig); err != nil {
			return fmt.Errorf("workload API SVID: %w", err)
		}
		defer appSrc.Close()
	}

	var out io.Writer = &lineCopy{w: os.Stdout}
	if o.auditLog != "-" {
		f, err := os.OpenFile(o.auditLog, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o640)
		if err != nil {
			return fmt.Errorf("--audit-log: %w", err)
		}
		defer f.Close()
		// The file is the log kept whole; a copy of each line goes to
		// standard output for kubectl logs and meshctl audit logs.
		out = io.MultiWriter(f, &lineCopy{w: os.Stdout})
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
	if s.table != nil {
		for _, w := range s.table.Warnings() {
			log.Warn("policy", "warning", w)
		}
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

	// The control plane: the policy and destinations not given as flags,
	// and the trust bundle, over mTLS with the proxy's own SVID.
	ctlConn, err := grpc.NewClient(target, resolverOpt, reconnect,
		grpc.WithTransportCredentials(credentials.NewTLS(tlsconfig.MTLSClientConfig(src, src, tlsconfig.AuthorizeID(s.ctlID)))),
		// The server permits a ping a minute while streams are open: a
		// controller that vanished without closing is noticed in about
		// a minute and a half, and the streams move to another replica.
		grpc.WithKeepaliveParams(keepalive.ClientParameters{Time: time.Minute, Timeout: 20 * time.Second}),
		// A destinations snapshot of a large cluster exceeds gRPC's 4 MiB
		// default (about 100 bytes a pod).
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(256<<20)))
	if err != nil {
		return err
	}
	defer ctlConn.Close()
	ccfg := client.Config{
		Conn: ctlConn, Namespace: o.podNS, Pod: o.podName, TrustDomain: s.td,
		Bundle: func(roots []*x509.Certificate) error {
			if appSrc != nil {
				if err := appSrc.SetBundle(roots); err != nil {
					return err
				}
			}
			return src.SetBundle(roots)
		}, Destinations: cfg.Destinations == nil, PendingWait: o.pendingWait,
		Logger: log, Registerer: prometheus.DefaultRegisterer,
	}
	var inForce atomic.Pointer[proxy.PolicyInfo]
	inForce.Store(s.static)
	cfg.Policy = inForce.Load
	if s.table == nil {
		ccfg.Policy = enforcePolicy(s.td, o.podNS, o.podName, enf, &inForce, log)
	}
	ctl, err := client.New(ccfg)
	if err != nil {
		return err
	}
	if cfg.Destinations == nil {
		cfg.Destinations = ctl
	}
	cfg.Readiness = ctl
	p, err := proxy.New(cfg)
	if err != nil {
		return err
	}
	var wapi *workloadapi.Server
	if s.wapiUIDs != nil {
		wapi, err = workloadapi.New(workloadapi.Config{Source: appSrc, TrustDomain: s.td, SocketPath: o.workloadAPI.socket, AllowedUIDs: s.wapiUIDs, Logger: log})
		if err != nil {
			return fmt.Errorf("--workload-api-socket: %w", err)
		}
	}
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return ctl.Run(gctx) })
	g.Go(func() error { return p.Run(gctx) })
	if wapi != nil {
		g.Go(func() error { return wapi.Run(gctx) })
	}
	return g.Wait()
}

// reconnect bounds gRPC's own reconnect back-off (2 minutes by default):
// after an outage of all replicas, a returning one is found within
// seconds.
var reconnect = grpc.WithConnectParams(grpc.ConnectParams{
	Backoff:           backoff.Config{BaseDelay: 200 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: 5 * time.Second},
	MinConnectTimeout: 5 * time.Second,
})

// controllers is the gRPC target for addrs: one host:port is resolved as
// usual (DNS); several, comma-separated, are the replicas' addresses,
// tried in order, the next when one fails.
func controllers(addrs string) (string, grpc.DialOption) {
	list := strings.Split(addrs, ",")
	if len(list) == 1 {
		return addrs, grpc.EmptyDialOption{}
	}
	r := manual.NewBuilderWithScheme("mesh-controllers")
	var state resolver.State
	for _, a := range list {
		state.Endpoints = append(state.Endpoints, resolver.Endpoint{Addresses: []resolver.Address{{Addr: strings.TrimSpace(a)}}})
	}
	r.InitialState(state)
	return r.Scheme() + ":///controllers", grpc.WithResolvers(r)
}

// liveBundle is the SVID source's bundle once there is a source, and the
// --bundle file's before.
type liveBundle struct {
	file *x509bundle.Bundle
	src  atomic.Pointer[source.Source]
}

func (b *liveBundle) GetX509BundleForTrustDomain(td spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	if s := b.src.Load(); s != nil {
		return s.GetX509BundleForTrustDomain(td)
	}
	return b.file.GetX509BundleForTrustDomain(td)
}
