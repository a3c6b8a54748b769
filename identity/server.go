package identity

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"golang.org/x/time/rate"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	authnv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/mesh-dev/mesh/ca"
	identityv1 "github.com/mesh-dev/mesh/identity/api/v1"
)

// DefaultAudience is the audience a proxy's projected token must be for.
const DefaultAudience = "identity.mesh.dev"

// Request size limits: an honest CSR is a few hundred bytes and a token a
// few kilobytes.
const (
	MaxCSRBytes   = 8 << 10
	MaxTokenBytes = 16 << 10
	// MaxRequestBytes is what the gRPC server should accept at most.
	MaxRequestBytes = MaxCSRBytes + MaxTokenBytes + 1<<10
)

// AuditType marks the identity service's audit events in the log stream.
const AuditType = "mesh.identity.audit.v1"

// Signer signs SVIDs for attested identities. *ca.CA is one.
type Signer interface {
	SignSVID(csr *x509.CertificateRequest, id spiffeid.ID, ttl time.Duration) (*ca.SVID, error)
	Bundle() []*x509.Certificate
	TrustDomain() spiffeid.TrustDomain
}

// ServerConfig configures the identity service.
type ServerConfig struct {
	// CA signs the SVIDs. Required.
	CA Signer
	// Kube reviews tokens and reads pods. Required.
	Kube kubernetes.Interface
	// Audience the tokens must be for. Zero means DefaultAudience.
	Audience string
	// RatePerIdentity and Burst limit Certify calls per SPIFFE ID. Zero
	// means one every 6 seconds with a burst of 10: a proxy renews every
	// half hour, so this only bites on a loop or an attack.
	RatePerIdentity rate.Limit
	Burst           int
	// Audit receives one event per Certify call. Zero means slog.Default().
	Audit *slog.Logger
	// Registerer receives the service's metrics. Zero means none.
	Registerer prometheus.Registerer
}

// Server is the identity service.
type Server struct {
	identityv1.UnimplementedIdentityServer
	cfg     ServerConfig
	td      spiffeid.TrustDomain
	metrics *serverMetrics

	mu       sync.Mutex
	limiters map[spiffeid.ID]*limiter
	calls    int
}

type limiter struct {
	*rate.Limiter
	last time.Time
}

// NewServer validates cfg and returns the service.
func NewServer(cfg ServerConfig) (*Server, error) {
	if cfg.CA == nil {
		return nil, errors.New("identity: ServerConfig.CA is required")
	}
	if cfg.Kube == nil {
		return nil, errors.New("identity: ServerConfig.Kube is required")
	}
	if cfg.Audience == "" {
		cfg.Audience = DefaultAudience
	}
	if cfg.RatePerIdentity == 0 {
		cfg.RatePerIdentity = rate.Every(6 * time.Second)
	}
	if cfg.Burst == 0 {
		cfg.Burst = 10
	}
	if cfg.Audit == nil {
		cfg.Audit = slog.Default()
	}
	m, err := newServerMetrics(cfg.Registerer)
	if err != nil {
		return nil, err
	}
	return &Server{cfg: cfg, td: cfg.CA.TrustDomain(), metrics: m, limiters: map[spiffeid.ID]*limiter{}}, nil
}

// Register adds the service to a gRPC server. Create that server with
// grpc.MaxRecvMsgSize(MaxRequestBytes).
func (s *Server) Register(r grpc.ServiceRegistrar) { identityv1.RegisterIdentityServer(r, s) }

// caller is what the service learned about a caller, for the audit event.
type caller struct {
	namespace, pod, serviceAccount string
	id                             spiffeid.ID
}

// Certify implements identityv1.IdentityServer.
func (s *Server) Certify(ctx context.Context, req *identityv1.CertifyRequest) (*identityv1.CertifyResponse, error) {
	start := time.Now()
	var who caller
	resp, svid, err := s.certify(ctx, req, &who)
	result := "issued"
	if err != nil {
		result = codeLabel(status.Code(err))
		if c := status.Code(err); c == codes.Unknown {
			// Every refusal carries a status; an unknown one is a bug.
			err = status.Error(codes.Internal, "identity: internal error")
			result = "internal"
		}
	}
	s.metrics.certify.WithLabelValues(result).Inc()
	s.metrics.latency.WithLabelValues(result).Observe(time.Since(start).Seconds())
	s.audit(ctx, &who, svid, err)
	return resp, err
}

func (s *Server) certify(ctx context.Context, req *identityv1.CertifyRequest, who *caller) (*identityv1.CertifyResponse, *ca.SVID, error) {
	csr, err := ParseCSR(req.GetCsr())
	if err != nil {
		return nil, nil, status.Error(codes.InvalidArgument, err.Error())
	}
	if err := s.attest(ctx, req.GetToken(), who); err != nil {
		return nil, nil, err
	}
	if err := CheckCSRIdentity(csr, who.id); err != nil {
		return nil, nil, status.Error(codes.PermissionDenied, fmt.Sprintf("identity: token for sa %q cannot sign: %v", who.serviceAccount, err))
	}
	if !s.allow(who.id) {
		return nil, nil, status.Errorf(codes.ResourceExhausted, "identity: too many requests for %q; retry later", who.id)
	}
	svid, err := s.cfg.CA.SignSVID(csr, who.id, 0)
	if err != nil {
		return nil, nil, status.Errorf(codes.Internal, "identity: sign %q: %v", who.id, err)
	}
	resp := &identityv1.CertifyResponse{SpiffeId: svid.ID.String(), ExpiresAtUnix: svid.Chain[0].NotAfter.Unix()}
	for _, c := range svid.Chain {
		resp.SvidChain = append(resp.SvidChain, c.Raw)
	}
	for _, c := range s.cfg.CA.Bundle() {
		resp.TrustBundle = append(resp.TrustBundle, c.Raw)
	}
	return resp, svid, nil
}

// attest reviews the token and checks its pod, filling who.
func (s *Server) attest(ctx context.Context, token string, who *caller) error {
	switch {
	case token == "":
		return status.Error(codes.Unauthenticated, "identity: no token")
	case len(token) > MaxTokenBytes:
		return status.Errorf(codes.InvalidArgument, "identity: token of %d bytes exceeds %d", len(token), MaxTokenBytes)
	}
	review, err := s.cfg.Kube.AuthenticationV1().TokenReviews().Create(ctx, &authnv1.TokenReview{
		Spec: authnv1.TokenReviewSpec{Token: token, Audiences: []string{s.cfg.Audience}},
	}, metav1.CreateOptions{})
	if err != nil {
		// Fail closed: no review, no certificate.
		return status.Errorf(codes.Unavailable, "identity: token review failed: %v", err)
	}
	st := review.Status
	if !st.Authenticated {
		reason := st.Error
		if reason == "" {
			reason = "not authenticated"
		}
		return status.Errorf(codes.Unauthenticated, "identity: token rejected for audience %q: %s", s.cfg.Audience, reason)
	}
	if !contains(st.Audiences, s.cfg.Audience) {
		return status.Errorf(codes.Unauthenticated, "identity: token is not for audience %q", s.cfg.Audience)
	}
	ns, sa, ok := serviceAccountUser(st.User.Username)
	if !ok {
		return status.Errorf(codes.Unauthenticated, "identity: %q is not a service account", st.User.Username)
	}
	who.namespace, who.serviceAccount = ns, sa
	podName, podUID := first(st.User.Extra["authentication.kubernetes.io/pod-name"]), first(st.User.Extra["authentication.kubernetes.io/pod-uid"])
	if podName == "" || podUID == "" {
		return status.Errorf(codes.Unauthenticated, "identity: token for sa %q is not bound to a pod (use a projected token)", sa)
	}
	who.pod = podName
	if who.id, err = ForServiceAccount(s.td, ns, sa); err != nil {
		return status.Error(codes.Unauthenticated, err.Error())
	}
	pod, err := s.cfg.Kube.CoreV1().Pods(ns).Get(ctx, podName, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		return status.Errorf(codes.PermissionDenied, "identity: pod %s/%s of the token no longer exists", ns, podName)
	case err != nil:
		return status.Errorf(codes.Unavailable, "identity: read pod %s/%s: %v", ns, podName, err)
	}
	return checkPod(pod, podUID, sa)
}

// checkPod requires the token's pod to be the live pod of the token's
// ServiceAccount. "Live" is scheduled, not finished and not being deleted:
// the phase is still Pending while native sidecars (the proxy among them)
// start, so Running cannot be required.
func checkPod(pod *corev1.Pod, uid, sa string) error {
	name := pod.Namespace + "/" + pod.Name
	switch {
	case string(pod.UID) != uid:
		return status.Errorf(codes.PermissionDenied, "identity: pod %s was replaced (uid %s, token for %s)", name, pod.UID, uid)
	case pod.DeletionTimestamp != nil:
		return status.Errorf(codes.PermissionDenied, "identity: pod %s is terminating", name)
	case pod.Spec.ServiceAccountName != sa:
		return status.Errorf(codes.PermissionDenied, "identity: pod %s runs as sa %q, not %q", name, pod.Spec.ServiceAccountName, sa)
	case pod.Spec.NodeName == "":
		return status.Errorf(codes.FailedPrecondition, "identity: pod %s is not scheduled", name)
	case pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed:
		return status.Errorf(codes.PermissionDenied, "identity: pod %s has finished (%s)", name, pod.Status.Phase)
	}
	return nil
}

func (s *Server) allow(id spiffeid.ID) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := time.Now()
	s.calls++
	if s.calls%1024 == 0 {
		// Forget identities idle long enough to have a full bucket again.
		for k, l := range s.limiters {
			if now.Sub(l.last) > time.Hour {
				delete(s.limiters, k)
			}
		}
	}
	l, ok := s.limiters[id]
	if !ok {
		l = &limiter{Limiter: rate.NewLimiter(s.cfg.RatePerIdentity, s.cfg.Burst)}
		s.limiters[id] = l
	}
	l.last = now
	return l.AllowN(now, 1)
}

func (s *Server) audit(ctx context.Context, who *caller, svid *ca.SVID, err error) {
	attrs := []slog.Attr{slog.String("type", AuditType)}
	if p, ok := peer.FromContext(ctx); ok && p.Addr != nil {
		attrs = append(attrs, slog.String("source", p.Addr.String()))
	}
	if who.namespace != "" {
		attrs = append(attrs, slog.String("namespace", who.namespace), slog.String("serviceAccount", who.serviceAccount))
	}
	if who.pod != "" {
		attrs = append(attrs, slog.String("pod", who.pod))
	}
	if !who.id.IsZero() {
		attrs = append(attrs, slog.String("spiffeID", who.id.String()))
	}
	if err != nil {
		attrs = append(attrs, slog.String("result", "refused"), slog.String("code", status.Code(err).String()), slog.String("reason", status.Convert(err).Message()))
		s.cfg.Audit.LogAttrs(ctx, slog.LevelWarn, "svid refused", attrs...)
		return
	}
	leaf := svid.Chain[0]
	attrs = append(attrs, slog.String("result", "issued"), slog.String("serial", leaf.SerialNumber.Text(16)), slog.Time("notAfter", leaf.NotAfter))
	s.cfg.Audit.LogAttrs(ctx, slog.LevelInfo, "svid issued", attrs...)
}

// codeLabel is a gRPC code in snake case, as metric labels are written:
// PermissionDenied is permission_denied.
func codeLabel(c codes.Code) string {
	var b strings.Builder
	for i, r := range c.String() {
		if 'A' <= r && r <= 'Z' {
			if i > 0 {
				b.WriteByte('_')
			}
			r += 'a' - 'A'
		}
		b.WriteRune(r)
	}
	return b.String()
}

func serviceAccountUser(username string) (ns, sa string, ok bool) {
	rest, ok := strings.CutPrefix(username, "system:serviceaccount:")
	if !ok {
		return "", "", false
	}
	ns, sa, ok = strings.Cut(rest, ":")
	return ns, sa, ok && ns != "" && sa != ""
}

func first(v authnv1.ExtraValue) string {
	if len(v) == 0 {
		return ""
	}
	return v[0]
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

type serverMetrics struct {
	certify *prometheus.CounterVec
	latency *prometheus.HistogramVec
}

func newServerMetrics(reg prometheus.Registerer) (*serverMetrics, error) {
	m := &serverMetrics{
		certify: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mesh_identity_certify_total",
			Help: "Certify calls by result: issued, or the gRPC code of the refusal.",
		}, []string{"result"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "mesh_identity_certify_duration_seconds",
			Help:    "Time to answer a Certify call, including the TokenReview.",
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 14),
		}, []string{"result"}),
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{m.certify, m.latency} {
			if err := reg.Register(c); err != nil {
				return nil, fmt.Errorf("identity: register metrics: %w", err)
			}
		}
	}
	return m, nil
}
