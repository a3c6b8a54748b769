// Package identitytest runs mesh's identity service as mesh-controller
// does, against a real kube-apiserver: the CA kept in a Secret, Certify
// (TokenReview and pod lookup included) served over gRPC with TLS, and a
// client that trusts only the bundle and the controller's identity. The
// identity package's tests and `make bench` (package bench) share it, as
// net/http/httptest serves net/http's.
package identitytest

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"sync"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	authnv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/mesh-dev/mesh/ca"
	"github.com/mesh-dev/mesh/identity"
	identityv1 "github.com/mesh-dev/mesh/identity/api/v1"
)

var (
	// TrustDomain is the service's trust domain.
	TrustDomain = spiffeid.RequireTrustDomainFromString("cluster.local")
	// ControllerID is the identity the service presents: mesh-controller's.
	ControllerID = spiffeid.RequireFromString("spiffe://cluster.local/ns/mesh-system/sa/mesh-controller")
)

// CASecretNamespace holds the CA's Secret, "mesh-ca"; Start creates it.
const CASecretNamespace = "mesh-system"

// Service is a running identity service and a client of it.
type Service struct {
	// CA signs the SVIDs, kept in the Secret mesh-system/mesh-ca.
	CA *ca.CA
	// Self is the service's own SVID source (ControllerID).
	Self *identity.SelfSource
	// Bundle is the CA's bundle as Start found it.
	Bundle *x509bundle.Bundle
	// Addr is the service's loopback address.
	Addr string
	// Client calls the service over TLS, trusting Bundle and ControllerID.
	Client identityv1.IdentityClient

	conn *grpc.ClientConn
	gs   *grpc.Server
	wg   sync.WaitGroup
	once sync.Once
}

// Start creates the namespace mesh-system, a CA kept in a Secret there,
// and an identity service configured by cfg (its CA and Kube are filled
// in; a zero Audit discards), served on 127.0.0.1. Close stops it.
func Start(ctx context.Context, kube kubernetes.Interface, cfg identity.ServerConfig) (*Service, error) {
	if err := Namespace(ctx, kube, CASecretNamespace); err != nil {
		return nil, err
	}
	authority, err := ca.New(ctx, ca.Config{
		TrustDomain: TrustDomain,
		Store:       &ca.SecretStore{Client: kube, Namespace: CASecretNamespace, Name: "mesh-ca"},
		Logger:      slog.New(slog.DiscardHandler),
	})
	if err != nil {
		return nil, fmt.Errorf("identitytest: %w", err)
	}
	cfg.CA, cfg.Kube = authority, kube
	if cfg.Audit == nil {
		cfg.Audit = slog.New(slog.DiscardHandler)
	}
	srv, err := identity.NewServer(cfg)
	if err != nil {
		return nil, fmt.Errorf("identitytest: %w", err)
	}
	s := &Service{CA: authority, Bundle: x509bundle.FromX509Authorities(TrustDomain, authority.Bundle())}
	if s.Self, err = identity.NewSelfSource(authority, ControllerID); err != nil {
		return nil, fmt.Errorf("identitytest: %w", err)
	}
	opts, err := identity.ServerOptions(identity.TransportConfig{})
	if err != nil {
		return nil, fmt.Errorf("identitytest: %w", err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("identitytest: %w", err)
	}
	s.gs = grpc.NewServer(append(opts, grpc.Creds(credentials.NewTLS(tlsconfig.TLSServerConfig(s.Self))))...)
	srv.Register(s.gs)
	s.wg.Go(func() { _ = s.gs.Serve(lis) })
	s.Addr = lis.Addr().String()
	if s.conn, err = grpc.NewClient(s.Addr, s.ClientCreds()); err != nil {
		s.Close()
		return nil, fmt.Errorf("identitytest: %w", err)
	}
	s.Client = identityv1.NewIdentityClient(s.conn)
	return s, nil
}

// ClientCreds trusts only the bundle Start found, and only ControllerID.
func (s *Service) ClientCreds() grpc.DialOption {
	return grpc.WithTransportCredentials(credentials.NewTLS(tlsconfig.TLSClientConfig(s.Bundle, tlsconfig.AuthorizeID(ControllerID))))
}

// Close stops the service and closes the client. It may be called more
// than once.
func (s *Service) Close() {
	s.once.Do(func() {
		if s.conn != nil {
			_ = s.conn.Close()
		}
		s.gs.Stop()
		s.wg.Wait()
	})
}

// Namespace creates namespace name and its ServiceAccounts.
func Namespace(ctx context.Context, kube kubernetes.Interface, name string, serviceAccounts ...string) error {
	if _, err := kube.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("identitytest: namespace %s: %w", name, err)
	}
	for _, sa := range serviceAccounts {
		if _, err := kube.CoreV1().ServiceAccounts(name).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: sa}}, metav1.CreateOptions{}); err != nil {
			return fmt.Errorf("identitytest: ServiceAccount %s/%s: %w", name, sa, err)
		}
	}
	return nil
}

// Pod creates a pod of ServiceAccount sa scheduled on node-1. The local
// cluster has no node by that name, so the pod stays Pending: the phase
// while a native sidecar proxy starts, which Certify accepts.
func Pod(ctx context.Context, kube kubernetes.Interface, namespace, name, sa string) (*corev1.Pod, error) {
	p, err := kube.CoreV1().Pods(namespace).Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: corev1.PodSpec{
			ServiceAccountName: sa,
			NodeName:           "node-1",
			Containers:         []corev1.Container{{Name: "app", Image: "mesh-e2e/echo"}},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		return nil, fmt.Errorf("identitytest: pod %s/%s: %w", namespace, name, err)
	}
	return p, nil
}

// Token requests a token of pod's ServiceAccount for audience, bound to
// the pod when bound is set, as the kubelet's projected volume does.
func Token(ctx context.Context, kube kubernetes.Interface, pod *corev1.Pod, audience string, bound bool) (string, error) {
	req := &authnv1.TokenRequest{Spec: authnv1.TokenRequestSpec{Audiences: []string{audience}}}
	if bound {
		req.Spec.BoundObjectRef = &authnv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: pod.Name, UID: pod.UID}
	}
	tr, err := kube.CoreV1().ServiceAccounts(pod.Namespace).CreateToken(ctx, pod.Spec.ServiceAccountName, req, metav1.CreateOptions{})
	if err != nil {
		return "", fmt.Errorf("identitytest: TokenRequest for %s/%s: %w", pod.Namespace, pod.Name, err)
	}
	return tr.Status.Token, nil
}
