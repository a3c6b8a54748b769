package identity

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
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
	"github.com/mesh-dev/mesh/identity/meshid"
	"github.com/mesh-dev/mesh/internal/ration"
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
	// RatePerPod and BurstPerPod limit Certify calls per pod, checked
	// after the review since only the review names the pod. Per pod, not
	// per SPIFFE ID: every replica of a Deployment shares its
	// ServiceAccount's ID, and a limit per ID would starve a large one
	// (500 replicas renew about every 3.6 s together) and hold a scale-up
	// for minutes. Zero means one every 6 seconds with a burst of 10: a
	// pod renews its SVIDs every half hour (two with the Workload API), so
	// this only bites on a loop or an attack.
	RatePerPod  rate.Limit
	BurstPerPod int
	// RatePerSource and BurstPerSource limit Certify calls per source IP
	// address, checked before anything else so a refused caller costs no
	// TokenReview. Zero means DefaultRatePerSource and
	// DefaultBurstPerSource; rate.Inf turns the limit off (in-process
	// tests and benchmarks only).
	RatePerSource  rate.Limit
	BurstPerSource int
	// MaxSources caps the source addresses tracked at once; addresses past
	// it share one bucket. Zero means DefaultMaxSources.
	MaxSources int
	// MaxConcurrentReviews caps attestations (TokenReview and pod read) in
	// flight. Zero means DefaultMaxConcurrentReviews.
	MaxConcurrentReviews int
	// ReviewWait is the longest a call waits for a review slot before it
	// is refused with ResourceExhausted. Zero means DefaultReviewWait.
	ReviewWait time.Duration
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

	sources *sourceLimiter
	reviews *reviewSlots
	// throttledAudit rations the audit events of calls refused by the
	// source and review limits, which an attacker controls the number of;
	// suppressed counts those left out, reported with the next one.
	throttledAudit *ration.Ration

	mu       sync.Mutex
	limiters map[string]*limiter // by namespace/name of the pod
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
	if err := cfg.defaults(); err != nil {
		return nil, err
	}
	m, err := newServerMetrics(cfg.Registerer)
	if err != nil {
		return nil, err
	}
	return &Server{
		cfg: cfg, td: cfg.CA.TrustDomain(), metrics: m,
		sources:        newSourceLimiter(cfg.RatePerSource, cfg.BurstPerSource, cfg.MaxSources),
		reviews:        newReviewSlots(cfg.MaxConcurrentReviews, cfg.ReviewWait),
		throttledAudit: ration.New(time.Second, 10),
		limiters:       map[string]*limiter{},
	}, nil
}

// defaults fills in the zero values and rejects negative ones.
func (cfg *ServerConfig) defaults() error {
	var errs []error
	negative := func(name string, bad bool, v any) {
		if bad {
			errs = append(errs, fmt.Errorf("identity: ServerConfig.%s is negative (%v)", name, v))
		}
	}
	negative("RatePerPod", cfg.RatePerPod < 0, cfg.RatePerPod)
	negative("BurstPerPod", cfg.BurstPerPod < 0, cfg.BurstPerPod)
	negative("RatePerSource", cfg.RatePerSource < 0, cfg.RatePerSource)
	negative("BurstPerSource", cfg.BurstPerSource < 0, cfg.BurstPerSource)
	negative("MaxSources", cfg.MaxSources < 0, cfg.MaxSources)
	negative("MaxConcurrentReviews", cfg.MaxConcurrentReviews < 0, cfg.MaxConcurrentReviews)
	negative("ReviewWait", cfg.ReviewWait < 0, cfg.ReviewWait)
	if err := errors.Join(errs...); err != nil {
		return err
	}
	if cfg.Audience == "" {
		cfg.Audience = DefaultAudience
	}
	if cfg.RatePerPod == 0 {
		cfg.RatePerPod = rate.Every(6 * time.Second)
	}
	if cfg.BurstPerPod == 0 {
		cfg.BurstPerPod = 10
	}
	if cfg.RatePerSource == 0 {
		cfg.RatePerSource = DefaultRatePerSource
	}
	if cfg.BurstPerSource == 0 {
		cfg.BurstPerSource = DefaultBurstPerSource
	}
	if cfg.MaxSources == 0 {
		cfg.MaxSources = DefaultMaxSources
	}
	if cfg.MaxConcurrentReviews == 0 {
		cfg.MaxConcurrentReviews = DefaultMaxConcurrentReviews
	}
	if cfg.ReviewWait == 0 {
		cfg.ReviewWait = DefaultReviewWait
	}
	if cfg.Audit == nil {
		cfg.Audit = slog.Default()
	}
	return nil
}

// Register adds the service to a gRPC server. Create that server with
// ServerOptions.
func (s *Server) Register(r grpc.ServiceRegistrar) { identityv1.RegisterIdentityServer(r, s) }

// caller is what the service learned about a caller, for the audit event.
type caller struct {
	namespace, pod, serviceAccount string
	id                             spiffeid.ID
	// throttled: refused by a limit an unauthenticated caller can trip
	// at will, so its audit event is rationed.
	throttled bool
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
	var suppressed int64
	if who.throttled {
		var ok bool
		if ok, suppressed = s.throttledAudit.Allow(); !ok {
			return resp, err
		}
	}
	s.audit(ctx, &who, svid, suppressed, err)
	return resp, err
}

func (s *Server) certify(ctx context.Context, req *identityv1.CertifyRequest, who *caller) (*identityv1.CertifyResponse, *ca.SVID, error) {
	// The source limit comes first: a refused caller costs no CSR
	// signature check and no TokenReview.
	src := sourceAddr(ctx)
	if ok, reason := s.sources.allow(src, time.Now()); !ok {
		who.throttled = true
		s.metrics.refused.WithLabelValues(reason).Inc()
		return nil, nil, status.Errorf(codes.ResourceExhausted, "identity: too many requests from %s (%s); retry later", sourceLabel(src), reason)
	}
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
	if !s.allow(who.namespace + "/" + who.pod) {
		s.metrics.refused.WithLabelValues(refusedPod).Inc()
		return nil, nil, status.Errorf(codes.ResourceExhausted, "identity: too many requests from pod %s/%s; retry later", who.namespace, who.pod)
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
	release, err := s.reviews.acquire(ctx)
	if err != nil {
		who.throttled = true
		s.metrics.refused.WithLabelValues(refusedCapacity).Inc()
		return err
	}
	defer release()
	s.metrics.inFlight.Inc()
	defer s.metrics.inFlight.Dec()
	ctx, cancel := context.WithTimeout(ctx, reviewTimeout)
	defer cancel()
	s.metrics.reviews.Inc()
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
	if who.id, err = meshid.ForServiceAccount(s.td, ns, sa); err != nil {
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

// allow takes a token from pod's bucket.
func (s *Server) allow(pod string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := time.Now()
	s.calls++
	if s.calls%1024 == 0 {
		// Forget pods idle long enough to have a full bucket again.
		for k, l := range s.limiters {
			if now.Sub(l.last) > time.Hour {
				delete(s.limiters, k)
			}
		}
	}
	l, ok := s.limiters[pod]
	if !ok {
		l = &limiter{Limiter: rate.NewLimiter(s.cfg.RatePerPod, s.cfg.BurstPerPod)}
		s.limiters[pod] = l
	}
	l.last = now
	return l.AllowN(now, 1)
}

func (s *Server) audit(ctx context.Context, who *caller, svid *ca.SVID, suppressed int64, err error) {
	attrs := []slog.Attr{slog.String("type", AuditType)}
	if suppressed > 0 {
		// Throttled refusals left out of the log since the last one in it.
		attrs = append(attrs, slog.Int64("suppressed", suppressed))
	}
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

// sourceLabel names a source address in a refusal.
func sourceLabel(a netip.Addr) string {
	if !a.IsValid() {
		return "a caller without an IP address"
	}
	return a.String()
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
