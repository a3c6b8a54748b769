// Package meshcontroller is the mesh-controller command: mesh's control
// plane, the CA (kept in a Secret, its issuer rotated as it falls due) and
// the identity service proxies get their SVIDs from. It turns flags into
// the configurations of packages ca and identity and runs them under one
// errgroup; cmd/mesh-controller only calls New.
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
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/mesh-dev/mesh/ca"
	"github.com/mesh-dev/mesh/identity"
)

type options struct {
	kubeconfig, trustDomain, namespace, serviceAccount, caSecret string
	existingSecret                                               bool
	identityAddr, metricsAddr, bundleOut                         string
	svidTTL                                                      time.Duration
}

// New returns the mesh-controller command.
func New() *cobra.Command {
	var o options
	cmd := &cobra.Command{
		Use:           "mesh-controller",
		Short:         "mesh's control plane: CA and identity service",
		SilenceUsage:  true,
		SilenceErrors: true,
		Args:          cobra.NoArgs,
		RunE:          func(cmd *cobra.Command, _ []string) error { return run(cmd.Context(), o) },
	}
	f := cmd.Flags()
	f.StringVar(&o.kubeconfig, "kubeconfig", "", "kubeconfig; empty: in-cluster")
	f.StringVar(&o.trustDomain, "trust-domain", identity.DefaultTrustDomain, "the mesh's trust domain")
	f.StringVar(&o.namespace, "namespace", "mesh-system", "the controller's namespace (holds the CA Secret)")
	f.StringVar(&o.serviceAccount, "service-account", "mesh-controller", "the controller's ServiceAccount: names its own SVID")
	f.StringVar(&o.caSecret, "ca-secret", "mesh-ca", "the Secret holding the CA")
	f.BoolVar(&o.existingSecret, "existing-secret", false, "the CA Secret was supplied by the user: never generate or change it")
	f.StringVar(&o.identityAddr, "identity-addr", ":15012", "identity service (gRPC, TLS with the controller's SVID)")
	f.StringVar(&o.metricsAddr, "metrics-addr", ":15014", "metrics and health (plaintext)")
	f.StringVar(&o.bundleOut, "write-bundle", "", "also write the trust bundle (PEM) to this file, for proxies to start from")
	f.DurationVar(&o.svidTTL, "svid-ttl", ca.DefaultSVIDTTL, "SVID lifetime")
	return cmd
}

func run(ctx context.Context, o options) error {
	log := slog.New(slog.NewJSONHandler(os.Stderr, nil))
	td, err := spiffeid.TrustDomainFromString(o.trustDomain)
	if err != nil {
		return fmt.Errorf("--trust-domain: %w", err)
	}
	var restCfg = clientcmd.NewNonInteractiveDeferredLoadingClientConfig(
		&clientcmd.ClientConfigLoadingRules{ExplicitPath: o.kubeconfig}, &clientcmd.ConfigOverrides{})
	rc, err := restCfg.ClientConfig()
	if err != nil {
		return fmt.Errorf("kubernetes client: %w", err)
	}
	// Each Certify makes two API calls (TokenReview, pod read): client-go's
	// default 5 QPS would cap the identity service far below its own
	// per-source limits. The service's concurrency cap bounds the load.
	rc.QPS, rc.Burst = 100, 200
	kube, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return err
	}
	authority, err := ca.New(ctx, ca.Config{
		TrustDomain: td, SVIDTTL: o.svidTTL, External: o.existingSecret, Logger: log,
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
	selfID, err := identity.ForServiceAccount(td, o.namespace, o.serviceAccount)
	if err != nil {
		return err
	}
	self, err := identity.NewSelfSource(authority, selfID)
	if err != nil {
		return err
	}
	srv, err := identity.NewServer(identity.ServerConfig{CA: authority, Kube: kube, Audit: log, Registerer: prometheus.DefaultRegisterer})
	if err != nil {
		return err
	}
	gopts, err := identity.ServerOptions(identity.TransportConfig{})
	if err != nil {
		return err
	}

	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return authority.Run(gctx, time.Minute) })

	lis, err := net.Listen("tcp", o.identityAddr)
	if err != nil {
		return fmt.Errorf("identity listener: %w", err)
	}
	gs := grpc.NewServer(append(gopts, grpc.Creds(credentials.NewTLS(tlsconfig.TLSServerConfig(self))))...)
	srv.Register(gs)
	g.Go(func() error {
		go func() { <-gctx.Done(); gs.GracefulStop() }()
		return gs.Serve(lis)
	})

	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.Handler())
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { w.Write([]byte("ok\n")) })
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
	log.Info("mesh-controller running", "trustDomain", td.String(), "identity", lis.Addr().String(), "spiffeID", selfID.String())
	return g.Wait()
}

// writeBundle writes the trust bundle as PEM, for proxies to start from.
func writeBundle(path string, td spiffeid.TrustDomain, c *ca.CA) error {
	b, err := x509bundle.FromX509Authorities(td, c.Bundle()).Marshal()
	if err != nil {
		return fmt.Errorf("--write-bundle: %w", err)
	}
	return os.WriteFile(path, b, 0o644)
}
