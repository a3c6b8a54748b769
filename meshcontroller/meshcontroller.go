// Package meshcontroller is the mesh-controller command: mesh's control
// plane, the CA (kept in a Secret, its issuer rotated as it falls due) and
// the identity service proxies get their SVIDs from, and the admission
// webhooks (sidecar injection, policy validation; package webhook). It
// turns flags into the configurations of those packages and runs them
// under one errgroup; cmd/mesh-controller only calls New.
package meshcontroller

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/spf13/cobra"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/mesh-dev/mesh/authz"
	"github.com/mesh-dev/mesh/authz/api/v1alpha1/policyclient"
	"github.com/mesh-dev/mesh/ca"
	"github.com/mesh-dev/mesh/controlplane"
	"github.com/mesh-dev/mesh/controlplane/castatus"
	"github.com/mesh-dev/mesh/controlplane/inventory"
	"github.com/mesh-dev/mesh/controlplane/policystatus"
	"github.com/mesh-dev/mesh/controlplane/trustbundle"
	"github.com/mesh-dev/mesh/identity"
	"github.com/mesh-dev/mesh/identity/meshid"
	"github.com/mesh-dev/mesh/internal/logconfig"
	"github.com/mesh-dev/mesh/version"
	"github.com/mesh-dev/mesh/webhook"
)

type options struct {
	kubeconfig, trustDomain, namespace, serviceAccount, caSecret    string
	existingSecret, allowAnyAddress                                 bool
	identityAddr, metricsAddr, bundleOut, replica, defaultPolicy    string
	svidTTL, maxSVIDTTL, leaseDuration, renewDeadline, retryPeriod  time.Duration
	webhookAddr, webhookService, mutatingWebhook, validatingWebhook string
	injectorConfig                                                  string
	kubeAPIQPS                                                      float64
	kubeAPIBurst                                                    int
	webhookExtraSANs                                                []string
	log                                                             logconfig.Config
}

// Version is mesh's release (package version), kept here for the
// controller's callers.
var Version = version.Version

// New returns the mesh-controller command.
func New() *cobra.Command {
	var o options
	cmd := &cobra.Command{
		Use:           "mesh-controller",
		Short:         "mesh's control plane: CA, identity service, and the policy, destination and trust-bundle streams",
		SilenceUsage:  true,
		SilenceErrors: true,
		Args:          cobra.NoArgs,
		RunE:          func(cmd *cobra.Command, _ []string) error { return run(cmd.Context(), o) },
	}
	host, _ := os.Hostname()
	f := cmd.Flags()
	o.log.AddFlags(f)
	f.StringVar(&o.kubeconfig, "kubeconfig", "", "kubeconfig; empty: in-cluster")
	// Each Certify makes two API calls (TokenReview, pod read): client-go's
	// default 5 QPS would cap the identity service far below its own
	// per-source limits. The service's concurrency cap bounds the load.
	f.Float64Var(&o.kubeAPIQPS, "kube-api-qps", 100, "requests per second the controller sends the API server, all replicas' own (a Certify is two: about half this many SVIDs a second)")
	f.IntVar(&o.kubeAPIBurst, "kube-api-burst", 200, "requests the controller may send the API server at once above --kube-api-qps")
	f.StringVar(&o.trustDomain, "trust-domain", identity.DefaultTrustDomain, "the mesh's trust domain")
	f.StringVar(&o.namespace, "namespace", "mesh-system", "the controller's namespace (holds the CA Secret and the leader Lease)")
	f.StringVar(&o.serviceAccount, "service-account", "mesh-controller", "the controller's ServiceAccount: names its own SVID")
	f.StringVar(&o.caSecret, "ca-secret", "mesh-ca", "the Secret holding the CA")
	f.BoolVar(&o.existingSecret, "existing-secret", false, "the CA Secret was supplied by the user: never generate or change it")
	f.StringVar(&o.identityAddr, "identity-addr", ":15012", "identity service and control-plane streams (gRPC, TLS with the controller's SVID)")
	f.StringVar(&o.metricsAddr, "metrics-addr", ":15014", "metrics and health (plaintext)")
	f.StringVar(&o.bundleOut, "write-bundle", "", "also write the trust bundle (PEM) to this file, for proxies to start from")
	f.DurationVar(&o.svidTTL, "svid-ttl", ca.DefaultSVIDTTL, "SVID lifetime")
	f.DurationVar(&o.maxSVIDTTL, "max-svid-ttl", 0, "the longest SVID lifetime the CA signs, and so how long after a root's successor is activated the old root can be retired (zero: 24h)")
	f.StringVar(&o.replica, "replica", envOr("POD_NAME", host), "this replica's name: the leader Lease's holder and its enforcement report")
	f.StringVar(&o.defaultPolicy, "default-policy", string(authz.DefaultAllowMesh), "what requests no ALLOW policy governs get: deny, allow-mesh, allow-same-namespace or allow-all")
	f.DurationVar(&o.leaseDuration, "leader-lease-duration", 15*time.Second, "how long a replica that stopped renewing keeps the leader Lease")
	f.DurationVar(&o.renewDeadline, "leader-renew-deadline", 10*time.Second, "how long the leader keeps trying to renew before it gives up leadership (and exits)")
	f.DurationVar(&o.retryPeriod, "leader-retry-period", 2*time.Second, "how often replicas try to acquire or renew the Lease")
	f.BoolVar(&o.allowAnyAddress, "allow-any-address", false, "do not check that a proxy connects from its own pod's address (tests running proxies outside pod networks)")
	_ = f.MarkHidden("allow-any-address")
	f.StringVar(&o.webhookAddr, "webhook-addr", ":9443", `admission webhooks (HTTPS: /inject, /validate-policy); "-" disables them`)
	f.StringVar(&o.webhookService, "webhook-service", "mesh-webhook", "the webhook Service in --namespace: names the serving certificate (<svc>.<ns>.svc and <svc>.<ns>.svc.cluster.local)")
	f.StringVar(&o.mutatingWebhook, "mutating-webhook", "mesh-injector", "the MutatingWebhookConfiguration whose caBundle is kept equal to the trust bundle (empty: none)")
	f.StringVar(&o.validatingWebhook, "validating-webhook", "mesh-policy-validator", "the ValidatingWebhookConfiguration whose caBundle is kept equal to the trust bundle (empty: none)")
	f.StringVar(&o.injectorConfig, "injector-config", "/etc/mesh/injector/config.yaml", "the sidecar injector's YAML config; a missing file means its defaults")
	f.StringSliceVar(&o.webhookExtraSANs, "webhook-extra-sans", nil, "more DNS names or IPs for the webhook serving certificate (tests calling the webhooks by URL)")
	_ = f.MarkHidden("webhook-extra-sans")
	return cmd
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

func run(ctx context.Context, o options) error {
	log, err := o.log.New(os.Stderr)
	if err != nil {
		return err
	}
	td, err := spiffeid.TrustDomainFromString(o.trustDomain)
	if err != nil {
		return fmt.Errorf("--trust-domain: %w", err)
	}
	meshDefault, err := authz.ParseDefaultMode(o.defaultPolicy)
	if err != nil {
		return fmt.Errorf("--default-policy: %w", err)
	}
	if o.replica == "" {
		return errors.New("--replica (or POD_NAME) is required")
	}
	if o.kubeAPIQPS <= 0 || o.kubeAPIBurst < 1 {
		return fmt.Errorf("--kube-api-qps %v and --kube-api-burst %d must be positive", o.kubeAPIQPS, o.kubeAPIBurst)
	}
	hooks, err := o.webhookSettings(td)
	if err != nil {
		return err
	}
	var restCfg = clientcmd.NewNonInteractiveDeferredLoadingClientConfig(
		&clientcmd.ClientConfigLoadingRules{ExplicitPath: o.kubeconfig}, &clientcmd.ConfigOverrides{})
	rc, err := restCfg.ClientConfig()
	if err != nil {
		return fmt.Errorf("kubernetes client: %w", err)
	}
	rc.QPS, rc.Burst = float32(o.kubeAPIQPS), o.kubeAPIBurst
	kube, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return err
	}
	policies, err := policyclient.New(rc)
	if err != nil {
		return err
	}
	authority, err := ca.New(ctx, ca.Config{
		TrustDomain: td, SVIDTTL: o.svidTTL, MaxSVIDTTL: o.maxSVIDTTL, External: o.existingSecret, Logger: log,
		Store: &ca.SecretStore{Client: kube, Namespace: o.namespace, Name: o.caSecret},
	})
	if err != nil {
		return err
	}
	if o.bundleOut != "" {
		if err := writeBundle(o.bundleOut, td, authority); err != nil {
			return err
		}
	}
	selfID, err := meshid.ForServiceAccount(td, o.namespace, o.serviceAccount)
	if err != nil {
		return err
	}
	self, err := identity.NewSelfSource(authority, selfID)
	if err != nil {
		return err
	}
	reg := prometheus.DefaultRegisterer
	srv, err := identity.NewServer(identity.ServerConfig{CA: authority, Kube: kube, Audit: log, Registerer: reg})
	if err != nil {
		return err
	}

	// Shared informers: the whole cluster's pods, Services,
	// EndpointSlices and namespaces, and the policies. ConfigMaps only
	// those mesh reads, so that the controller neither caches nor may
	// read any other: the trust-bundle ones by name in every namespace,
	// and its own namespace's (enforcement reports, the CA status). The
	// CA's one Secret on its own.
	factory := informers.NewSharedInformerFactory(kube, 0)
	bundleCMs := informers.NewSharedInformerFactoryWithOptions(kube, 0,
		informers.WithTweakListOptions(func(lo *metav1.ListOptions) { lo.FieldSelector = "metadata.name=" + trustbundle.ConfigMapName }))
	meshCMs := informers.NewSharedInformerFactoryWithOptions(kube, 0, informers.WithNamespace(o.namespace))
	policyInformer := policyclient.NewInformer(policies, 0)
	inv, err := inventory.New(inventory.Config{TrustDomain: td, MeshDefault: meshDefault, Informers: factory, Policies: policyInformer, Logger: log})
	if err != nil {
		return err
	}
	cp, err := controlplane.New(controlplane.Config{Inventory: inv, Bundle: authority, TrustDomain: td, AllowAnyAddress: o.allowAnyAddress, Logger: log, Registerer: reg})
	if err != nil {
		return err
	}
	reporter, err := policystatus.NewReporter(policystatus.ReporterConfig{Kube: kube, Namespace: o.namespace, Replica: o.replica, Source: cp, Logger: log})
	if err != nil {
		return err
	}
	statusWriter, err := policystatus.NewWriter(policystatus.WriterConfig{
		Policies: policies, PolicyInformer: policyInformer, Informers: factory, ReportInformers: meshCMs,
		Namespace: o.namespace, Logger: log, Registerer: reg,
	})
	if err != nil {
		return err
	}
	bundles, err := trustbundle.New(trustbundle.Config{Kube: kube, Informers: factory, ConfigMapInformers: bundleCMs, Bundle: authority, Namespaces: []string{o.namespace}, Logger: log, Registerer: reg})
	if err != nil {
		return err
	}
	caStatus, err := castatus.New(castatus.Config{Kube: kube, Informers: meshCMs, CA: authority, Namespace: o.namespace, Replica: o.replica, Logger: log})
	if err != nil {
		return err
	}
	secretFactory := informers.NewSharedInformerFactoryWithOptions(kube, 0, informers.WithNamespace(o.namespace),
		informers.WithTweakListOptions(func(lo *metav1.ListOptions) { lo.FieldSelector = "metadata.name=" + o.caSecret }))
	if _, err := secretFactory.Core().V1().Secrets().Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		// Another replica rotated the issuer, or the leader took a
		// rotation step meshctl asked for: load it, and the bundle
		// streams push it.
		UpdateFunc: func(_, _ any) { reloadCA(ctx, authority, log) },
		AddFunc:    func(any) { reloadCA(ctx, authority, log) },
	}); err != nil {
		return err
	}
	var hookServer *webhook.Server
	if hooks != nil {
		if hookServer, err = newWebhookServer(hooks, authority, kube, factory, log, reg); err != nil {
			return err
		}
	}
	leader := prometheus.NewGauge(prometheus.GaugeOpts{Name: "mesh_controller_leader", Help: "1 while this replica holds the leader Lease (issuer rotation, policy status, trust-bundle ConfigMaps, CA status and rotation requests), else 0."})
	if err := reg.Register(leader); err != nil {
		return err
	}

	gopts, err := identity.ServerOptions(identity.TransportConfig{})
	if err != nil {
		return err
	}
	lis, err := net.Listen("tcp", o.identityAddr)
	if err != nil {
		return fmt.Errorf("identity listener: %w", err)
	}
	gs := grpc.NewServer(append(gopts, grpc.Creds(credentials.NewTLS(controlplane.ServerTLS(self, caBundle{authority}))))...)
	srv.Register(gs)
	cp.Register(gs)

	g, gctx := errgroup.WithContext(ctx)
	for _, f := range []informers.SharedInformerFactory{factory, bundleCMs, meshCMs, secretFactory} {
		f.Start(gctx.Done())
	}
	go policyInformer.Run(gctx.Done())
	g.Go(func() error {
		<-gctx.Done()
		for _, f := range []informers.SharedInformerFactory{factory, bundleCMs, meshCMs, secretFactory} {
			f.Shutdown()
		}
		return nil
	})
	g.Go(func() error {
		go func() { <-gctx.Done(); gs.GracefulStop() }()
		return gs.Serve(lis)
	})
	g.Go(func() error { return reporter.Run(gctx) })
	if hookServer != nil {
		hookLis, err := net.Listen("tcp", o.webhookAddr)
		if err != nil {
			return fmt.Errorf("webhook listener: %w", err)
		}
		// Every replica serves the webhooks and keeps their caBundle
		// (package webhook says why not the leader only).
		g.Go(func() error { return hookServer.Run(gctx, hookLis) })
	}
	g.Go(func() error {
		// What must happen once: issuer rotation, policy status, the
		// trust-bundle ConfigMaps, and the CA status with the rotation
		// steps operators ask for. Losing the Lease ends the process (as
		// cert-manager does): another replica has it, and a clean restart
		// is simpler than stopping each part halfway.
		return lead(gctx, kube, o, log, leader, func(lctx context.Context) error {
			lg, lctx := errgroup.WithContext(lctx)
			lg.Go(func() error { return authority.Run(lctx, time.Minute) })
			lg.Go(func() error { return statusWriter.Run(lctx) })
			lg.Go(func() error { return bundles.Run(lctx) })
			lg.Go(func() error { return caStatus.Run(lctx) })
			return lg.Wait()
		})
	})

	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.Handler())
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { w.Write([]byte("ok\n")) })
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		if !inv.HasSynced() {
			http.Error(w, "informers not synced", http.StatusServiceUnavailable)
			return
		}
		w.Write([]byte("ok\n"))
	})
	metrics := &http.Server{Addr: o.metricsAddr, Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	g.Go(func() error {
		go func() {
			<-gctx.Done()
			sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			_ = metrics.Shutdown(sctx)
		}()
		if err := metrics.ListenAndServe(); !errors.Is(err, http.ErrServerClosed) {
			return err
		}
		return nil
	})
	log.Info("mesh-controller running", "trustDomain", td.String(), "identity", lis.Addr().String(), "spiffeID", selfID.String(), "replica", o.replica)
	return g.Wait()
}

func reloadCA(ctx context.Context, authority *ca.CA, log *slog.Logger) {
	if err := authority.Reload(ctx); err != nil && ctx.Err() == nil {
		log.Error("reloading the CA after its Secret changed", "err", err)
	}
}

// caBundle is the CA's current bundle as a go-spiffe bundle source, so
// that a client SVID issued under a root added a moment ago verifies.
type caBundle struct{ ca *ca.CA }

func (b caBundle) GetX509BundleForTrustDomain(td spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	if td != b.ca.TrustDomain() {
		return nil, fmt.Errorf("no bundle for trust domain %q", td)
	}
	return x509bundle.FromX509Authorities(td, b.ca.Bundle()), nil
}

// writeBundle writes the trust bundle as PEM, for proxies to start from.
func writeBundle(path string, td spiffeid.TrustDomain, c *ca.CA) error {
	b, err := x509bundle.FromX509Authorities(td, c.Bundle()).Marshal()
	if err != nil {
		return fmt.Errorf("--write-bundle: %w", err)
	}
	return os.WriteFile(path, b, 0o644)
}
