// Package controlplane serves the control-plane API (package
// controlplane/api/v1) from mesh-controller: each proxy's compiled policy,
// the mesh's destinations and the trust bundle, as server streams, and the
// proxies' acknowledgements of the policies they enforce.
//
// Every replica serves it. A caller is the SVID it presents over mutual
// TLS; each request names the pod the proxy runs in, which must be a live
// pod of that SVID's ServiceAccount at the caller's address, so a proxy
// can read no other pod's policy and acknowledge nothing for a pod that is
// not its own. (Destinations are the same for every proxy: every meshed
// pod's address and identity.)
//
// Nothing here sends from an informer callback: the inventory marks each
// stream's subscription, and the stream's own goroutine takes what
// changed when it can send, so a slow proxy gets the latest state, late,
// and never holds up another.
package controlplane

import (
	"bytes"
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"

	controlplanev1 "github.com/mesh-dev/mesh/controlplane/api/v1"
	"github.com/mesh-dev/mesh/controlplane/inventory"
	"github.com/mesh-dev/mesh/identity/meshid"
)

// Bundle is the trust bundle and its changes; *ca.CA is one.
type Bundle interface {
	Bundle() []*x509.Certificate
	Updated() <-chan struct{}
}

// Config configures a Server.
type Config struct {
	// Inventory answers the watches. Required.
	Inventory *inventory.Inventory
	// Bundle is the trust bundle pushed to proxies. Required.
	Bundle Bundle
	// TrustDomain is the mesh's: callers must be in it. Required.
	TrustDomain spiffeid.TrustDomain
	// AllowAnyAddress skips the check that a caller connects from its
	// pod's own address. Zero (false) means the check is made; only tests
	// that run proxies outside pod networks set it.
	AllowAnyAddress bool
	// StaleAfter is how long a proxy may take to acknowledge a policy
	// before it counts as stale. Zero means 10 seconds.
	StaleAfter time.Duration
	// Logger. Zero means discard.
	Logger *slog.Logger
	// Registerer receives the metrics. Zero means none.
	Registerer prometheus.Registerer
}

// Server implements controlplanev1.ControlPlaneServer.
type Server struct {
	controlplanev1.UnimplementedControlPlaneServer
	cfg Config
	m   *metrics

	mu sync.Mutex
	// streams are the open policy streams, by "namespace/pod"; a pod may
	// briefly have two (a reconnect overlapping the old stream).
	streams map[string][]*policyStream
	changed chan struct{}
}

// policyStream is what was sent on one policy stream and acknowledged.
type policyStream struct {
	sent map[string]sent // by version, the versions not yet superseded by an ack
	// acked is the last version the proxy acknowledged, and what it
	// applies; lastSent the last one sent.
	acked    string
	applied  []*controlplanev1.PolicyRef
	lastSent string
	sentAt   time.Time
}

type sent struct {
	applied []*controlplanev1.PolicyRef
	seen    time.Time // when the change that produced it was seen
}

// New returns a server; Register adds it to a gRPC server.
func New(cfg Config) (*Server, error) {
	if cfg.Inventory == nil || cfg.Bundle == nil || cfg.TrustDomain.IsZero() {
		return nil, errors.New("controlplane: Inventory, Bundle and TrustDomain are required")
	}
	if cfg.StaleAfter == 0 {
		cfg.StaleAfter = 10 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	s := &Server{cfg: cfg, streams: map[string][]*policyStream{}, changed: make(chan struct{})}
	m, err := newMetrics(cfg.Registerer, s.stale)
	if err != nil {
		return nil, err
	}
	s.m = m
	return s, nil
}

// Register adds the service to a gRPC server.
func (s *Server) Register(r grpc.ServiceRegistrar) { controlplanev1.RegisterControlPlaneServer(r, s) }

// authorize checks that the caller is a proxy of pod ns/name, and returns
// the pod.
func (s *Server) authorize(ctx context.Context, ns, name string) (*corev1.Pod, error) {
	refuse := func(reason string, c codes.Code, format string, args ...any) error {
		s.m.refusals.WithLabelValues(reason).Inc()
		return status.Errorf(c, format, args...)
	}
	if !s.cfg.Inventory.HasSynced() {
		return nil, refuse("starting", codes.Unavailable, "controlplane: the controller is starting; retry")
	}
	p, ok := peer.FromContext(ctx)
	if !ok {
		return nil, refuse("no_peer", codes.Unauthenticated, "controlplane: no peer")
	}
	ti, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok || len(ti.State.PeerCertificates) == 0 {
		return nil, refuse("no_svid", codes.Unauthenticated, "controlplane: the caller presented no SVID")
	}
	// ServerTLS verified it at the handshake; verifying here again keeps
	// this check whatever TLS configuration the server was given.
	id, _, err := x509svid.Verify(ti.State.PeerCertificates, x509bundle.FromX509Authorities(s.cfg.TrustDomain, s.cfg.Bundle.Bundle()))
	if err != nil || !id.MemberOf(s.cfg.TrustDomain) {
		return nil, refuse("bad_svid", codes.Unauthenticated, "controlplane: the caller's certificate is not an SVID of trust domain %q", s.cfg.TrustDomain)
	}
	sns, sa, err := meshid.ServiceAccountOf(id)
	if err != nil {
		return nil, refuse("bad_svid", codes.PermissionDenied, "controlplane: %s names no ServiceAccount: %v", id, err)
	}
	if ns == "" || name == "" {
		return nil, refuse("bad_request", codes.InvalidArgument, "controlplane: the request must name the proxy's pod (namespace and pod)")
	}
	if ns != sns {
		return nil, refuse("not_own_pod", codes.PermissionDenied, "controlplane: %s may not ask about pods of namespace %q", id, ns)
	}
	pod, err := s.cfg.Inventory.Pod(ns, name)
	if apierrors.IsNotFound(err) {
		// A pod created a moment ago may not be in this replica's cache
		// yet: the proxy retries.
		return nil, refuse("no_pod", codes.NotFound, "controlplane: pod %s/%s not found", ns, name)
	}
	if err != nil {
		return nil, refuse("no_pod", codes.Unavailable, "controlplane: pod %s/%s: %v", ns, name, err)
	}
	podSA := pod.Spec.ServiceAccountName
	if podSA == "" {
		podSA = "default"
	}
	if podSA != sa || !inventory.Live(pod) {
		return nil, refuse("not_own_pod", codes.PermissionDenied, "controlplane: %s is not the identity of live pod %s/%s", id, ns, name)
	}
	if !s.cfg.AllowAnyAddress {
		addr, err := netip.ParseAddrPort(p.Addr.String())
		if err != nil || !podHasIP(pod, addr.Addr().Unmap()) {
			return nil, refuse("not_own_pod", codes.PermissionDenied, "controlplane: the caller at %s is not pod %s/%s", p.Addr, ns, name)
		}
	}
	return pod, nil
}

func podHasIP(pod *corev1.Pod, a netip.Addr) bool {
	for _, ip := range pod.Status.PodIPs {
		if b, err := netip.ParseAddr(ip.IP); err == nil && b.Unmap() == a {
			return true
		}
	}
	b, err := netip.ParseAddr(pod.Status.PodIP)
	return err == nil && b.Unmap() == a
}

// WatchDestinations implements the API.
func (s *Server) WatchDestinations(req *controlplanev1.WatchRequest, stream grpc.ServerStreamingServer[controlplanev1.Destinations]) error {
	ctx := stream.Context()
	if _, err := s.authorize(ctx, req.GetNamespace(), req.GetPod()); err != nil {
		return err
	}
	inv := s.cfg.Inventory
	sub := inv.Subscribe(inventory.WatchDestinations, req.GetNamespace(), req.GetPod())
	defer sub.Close()
	s.m.connected.WithLabelValues("destinations").Inc()
	defer s.m.connected.WithLabelValues("destinations").Dec()

	if err := stream.Send(&controlplanev1.Destinations{Snapshot: true, Upserts: inv.Destinations()}); err != nil {
		return err
	}
	s.m.pushes.WithLabelValues("destinations").Inc()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-sub.Wake():
		}
		msg := &controlplanev1.Destinations{}
		keys := sub.TakeDestinations()
		slices.Sort(keys)
		for _, k := range keys {
			if d := inv.Destination(k); d != nil {
				msg.Upserts = append(msg.Upserts, d)
			} else {
				msg.Removes = append(msg.Removes, k)
			}
		}
		if len(msg.Upserts)+len(msg.Removes) == 0 {
			continue
		}
		if err := stream.Send(msg); err != nil {
			return err
		}
		s.m.pushes.WithLabelValues("destinations").Inc()
	}
}

// WatchPolicy implements the API.
func (s *Server) WatchPolicy(req *controlplanev1.WatchRequest, stream grpc.ServerStreamingServer[controlplanev1.Policy]) error {
	ctx := stream.Context()
	ns, name := req.GetNamespace(), req.GetPod()
	if _, err := s.authorize(ctx, ns, name); err != nil {
		return err
	}
	inv := s.cfg.Inventory
	sub := inv.Subscribe(inventory.WatchPolicy, ns, name)
	defer sub.Close()
	ps := &policyStream{sent: map[string]sent{}}
	key := ns + "/" + name
	s.mu.Lock()
	s.streams[key] = append(s.streams[key], ps)
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		s.streams[key] = slices.DeleteFunc(s.streams[key], func(x *policyStream) bool { return x == ps })
		if len(s.streams[key]) == 0 {
			delete(s.streams, key)
		}
		s.mu.Unlock()
		s.notify()
	}()
	s.m.connected.WithLabelValues("policy").Inc()
	defer s.m.connected.WithLabelValues("policy").Dec()

	seen := time.Now()
	for {
		pol, err := inv.Policy(ns, name)
		switch {
		case errors.Is(err, inventory.ErrInvalidDeny):
			s.cfg.Logger.Error("policy not pushed: an enforced DENY policy that applies is invalid", "pod", key, "err", err)
			if ps.lastSent != "" {
				break // keep enforcing the last good policy
			}
			pol, err = inventory.DenyAll(), nil
		case apierrors.IsNotFound(err):
			return status.Errorf(codes.NotFound, "controlplane: pod %s is gone", key)
		case err != nil:
			s.cfg.Logger.Error("policy not compiled", "pod", key, "err", err)
		}
		if err == nil && pol != nil && pol.Version != ps.lastSent {
			s.mu.Lock()
			ps.sent[pol.Version] = sent{applied: pol.Applied, seen: seen}
			ps.lastSent, ps.sentAt = pol.Version, time.Now()
			s.mu.Unlock()
			if err := stream.Send(pol); err != nil {
				return err
			}
			s.m.pushes.WithLabelValues("policy").Inc()
		}
		select {
		case <-ctx.Done():
			return nil
		case <-sub.Wake():
			seen = time.Now()
			sub.TakePolicy()
		}
	}
}

// AckPolicy implements the API.
func (s *Server) AckPolicy(ctx context.Context, ack *controlplanev1.PolicyAck) (*controlplanev1.PolicyAckResponse, error) {
	ns, name := ack.GetNamespace(), ack.GetPod()
	if _, err := s.authorize(ctx, ns, name); err != nil {
		return nil, err
	}
	key := ns + "/" + name
	if ack.GetError() != "" {
		s.m.nacks.Inc()
		s.cfg.Logger.Warn("proxy refused a policy", "pod", key, "version", ack.GetVersion(), "err", ack.GetError())
		return &controlplanev1.PolicyAckResponse{}, nil
	}
	s.mu.Lock()
	matched := false
	for _, ps := range s.streams[key] {
		st, ok := ps.sent[ack.GetVersion()]
		if !ok {
			continue
		}
		matched = true
		if ps.acked != ack.GetVersion() {
			s.m.ackLatency.Observe(time.Since(st.seen).Seconds())
		}
		ps.acked, ps.applied = ack.GetVersion(), st.applied
		// Versions sent before the acknowledged one will not be acked.
		for v := range ps.sent {
			if v != ack.GetVersion() && v != ps.lastSent {
				delete(ps.sent, v)
			}
		}
	}
	s.mu.Unlock()
	if !matched {
		// An ack for a stream on another replica, or one already closed:
		// that replica counts it.
		return &controlplanev1.PolicyAckResponse{}, nil
	}
	s.notify()
	return &controlplanev1.PolicyAckResponse{}, nil
}

// WatchTrustBundle implements the API.
func (s *Server) WatchTrustBundle(req *controlplanev1.WatchRequest, stream grpc.ServerStreamingServer[controlplanev1.TrustBundle]) error {
	ctx := stream.Context()
	if _, err := s.authorize(ctx, req.GetNamespace(), req.GetPod()); err != nil {
		return err
	}
	s.m.connected.WithLabelValues("trust_bundle").Inc()
	defer s.m.connected.WithLabelValues("trust_bundle").Dec()
	var last [][]byte
	for {
		updated := s.cfg.Bundle.Updated()
		var roots [][]byte
		for _, c := range s.cfg.Bundle.Bundle() {
			roots = append(roots, c.Raw)
		}
		if !slices.EqualFunc(roots, last, bytes.Equal) && len(roots) > 0 {
			if err := stream.Send(&controlplanev1.TrustBundle{Roots: roots}); err != nil {
				return err
			}
			s.m.pushes.WithLabelValues("trust_bundle").Inc()
			last = roots
		}
		select {
		case <-ctx.Done():
			return nil
		case <-updated:
		}
	}
}

// Enforcement counts, per policy ("namespace/name") and generation, the
// pods whose proxy, connected to this replica, acknowledged a policy that
// applies it.
func (s *Server) Enforcement() map[string]map[int64]int32 {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := map[string]map[int64]int32{}
	for _, streams := range s.streams {
		// One count per pod, however many streams it has open.
		counted := map[string]bool{}
		for _, ps := range streams {
			for _, r := range ps.applied {
				k := r.Namespace + "/" + r.Name
				ck := fmt.Sprintf("%s@%d", k, r.Generation)
				if counted[ck] {
					continue
				}
				counted[ck] = true
				if out[k] == nil {
					out[k] = map[int64]int32{}
				}
				out[k][r.Generation]++
			}
		}
	}
	return out
}

// EnforcementChanged is closed (and replaced) when Enforcement may have
// changed.
func (s *Server) EnforcementChanged() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.changed
}

func (s *Server) notify() {
	s.mu.Lock()
	close(s.changed)
	s.changed = make(chan struct{})
	s.mu.Unlock()
}

// stale counts the policy streams whose proxy has not acknowledged the
// last policy sent within StaleAfter.
func (s *Server) stale() float64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, streams := range s.streams {
		for _, ps := range streams {
			if ps.lastSent != "" && ps.acked != ps.lastSent && time.Since(ps.sentAt) > s.cfg.StaleAfter {
				n++
			}
		}
	}
	return float64(n)
}
