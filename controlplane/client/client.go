package client

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	controlplanev1 "github.com/mesh-dev/mesh/controlplane/api/v1"
)

// Errors Lookup wraps, so the proxy can label its refusals without reading
// error text.
var (
	// ErrPending: no destinations snapshot has arrived yet, and none came
	// within Config.PendingWait or the caller's context.
	ErrPending = errors.New("client: the destinations are not known yet")
	// ErrBadDestination: the controller's entry for the address cannot be
	// used safely (a meshed pod without an acceptable identity, or a kind
	// that contradicts the address), so the address is refused.
	ErrBadDestination = errors.New("client: the controller's entry for this destination is unusable")
)

// Config configures a Client.
type Config struct {
	// Conn reaches the controller (any replica). Required.
	Conn grpc.ClientConnInterface
	// Namespace and Pod name the proxy's pod, in every request. Required.
	Namespace, Pod string
	// TrustDomain is the mesh's: identities outside it are refused.
	// Required.
	TrustDomain spiffeid.TrustDomain
	// Policy, when set, receives every Policy message, one at a time, in
	// order. An error is sent back as a NACK (PolicyAck.error) and the
	// previous policy stays in force, which is the callback's to ensure; a
	// nil error is ACKed with the message's version once Policy returned.
	// Nil: the policy stream is not watched.
	Policy func(*controlplanev1.Policy) error
	// Bundle, when set, receives every trust bundle: its roots, parsed,
	// never empty, each a CA certificate. A bundle that fails these checks
	// is refused (logged and counted) before Bundle sees it; an error from
	// Bundle is logged and counted too. Either way the previous bundle is
	// kept. Nil: the trust bundle stream is not watched.
	Bundle func(roots []*x509.Certificate) error
	// Destinations: whether to watch the destinations, which Lookup
	// answers.
	Destinations bool
	// PendingWait bounds how long Lookup waits for the first destinations
	// snapshot. Zero means 5 seconds.
	PendingWait time.Duration
	// MinBackoff and MaxBackoff bound the delay before a watch reconnects
	// (jittered, doubling after each failure, back to the shortest after a
	// stream that delivered a message). Zero means 200ms and 15s.
	MinBackoff, MaxBackoff time.Duration
	// Logger. Zero means discard.
	Logger *slog.Logger
	// Registerer receives the mesh_proxy_control_* metrics. Zero means
	// none.
	Registerer prometheus.Registerer
}

// Client keeps the proxy's policy, destinations and trust bundle current
// from the controller's streams.
type Client struct {
	cfg Config
	api controlplanev1.ControlPlaneClient
	log *slog.Logger
	m   *metrics

	// dest is the current destinations table; only the destinations watch
	// replaces it.
	dest        atomic.Pointer[table]
	policyReady atomic.Bool
	bundleReady atomic.Bool
	running     atomic.Bool
}

// New validates cfg and returns a Client; nothing runs before Run.
func New(cfg Config) (*Client, error) {
	var errs []error
	if cfg.Conn == nil {
		errs = append(errs, errors.New("client: Config.Conn is required"))
	}
	if cfg.Namespace == "" || cfg.Pod == "" {
		errs = append(errs, errors.New("client: Config.Namespace and Config.Pod are required"))
	}
	if !utf8.ValidString(cfg.Namespace) || !utf8.ValidString(cfg.Pod) {
		// They go into every request, where protobuf refuses invalid
		// UTF-8.
		errs = append(errs, errors.New("client: Config.Namespace and Config.Pod must be valid UTF-8"))
	}
	if cfg.TrustDomain.IsZero() {
		errs = append(errs, errors.New("client: Config.TrustDomain is required"))
	}
	if cfg.Policy == nil && cfg.Bundle == nil && !cfg.Destinations {
		errs = append(errs, errors.New("client: nothing to watch: set Config.Policy, Config.Bundle or Config.Destinations"))
	}
	if cfg.PendingWait < 0 || cfg.MinBackoff < 0 || cfg.MaxBackoff < 0 {
		errs = append(errs, errors.New("client: Config.PendingWait, MinBackoff and MaxBackoff must not be negative"))
	}
	if cfg.PendingWait == 0 {
		cfg.PendingWait = 5 * time.Second
	}
	if cfg.MinBackoff == 0 {
		cfg.MinBackoff = 200 * time.Millisecond
	}
	if cfg.MaxBackoff == 0 {
		cfg.MaxBackoff = 15 * time.Second
	}
	if cfg.MinBackoff > cfg.MaxBackoff {
		errs = append(errs, fmt.Errorf("client: Config.MinBackoff %s is above MaxBackoff %s", cfg.MinBackoff, cfg.MaxBackoff))
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	m, err := newMetrics(cfg.Registerer)
	if err != nil {
		return nil, err
	}
	c := &Client{cfg: cfg, api: controlplanev1.NewControlPlaneClient(cfg.Conn), log: cfg.Logger, m: m}
	c.dest.Store(newTable())
	return c, nil
}

// Run runs the enabled watches, each in its own goroutine, reconnecting
// after any error with jittered back-off, until ctx ends; then it waits for
// them (and for a Policy or Bundle callback in progress to return) and
// returns nil. Run may be called once.
func (c *Client) Run(ctx context.Context) error {
	if !c.running.CompareAndSwap(false, true) {
		return errors.New("client: Run called twice")
	}
	var wg sync.WaitGroup
	if c.cfg.Policy != nil {
		wg.Go(func() { c.watch(ctx, kindPolicy, c.watchPolicy) })
	}
	if c.cfg.Destinations {
		wg.Go(func() { c.watch(ctx, kindDestinations, c.watchDestinations) })
	}
	if c.cfg.Bundle != nil {
		wg.Go(func() { c.watch(ctx, kindBundle, c.watchBundle) })
	}
	wg.Wait()
	return nil
}

// Ready reports whether every enabled watch has delivered its first state:
// a policy Policy accepted, a destinations snapshot, a bundle Bundle
// accepted. It stays true across reconnects, since the last state is kept.
func (c *Client) Ready() bool {
	return (c.cfg.Policy == nil || c.policyReady.Load()) &&
		(!c.cfg.Destinations || c.dest.Load().synced) &&
		(c.cfg.Bundle == nil || c.bundleReady.Load())
}

// Lookup says what is at addr: a Service port ("clusterIP:port") first,
// then a pod at addr's IP; an address the controller does not know is
// Destination{}, not meshed. A meshed pod without an acceptable identity is
// an error wrapping ErrBadDestination, never "not meshed".
//
// Once the first snapshot has arrived Lookup never blocks (and does not
// allocate on a known address). Before it, Lookup waits for it up to
// PendingWait or ctx's end, whichever is first, then fails with an error
// wrapping ErrPending.
func (c *Client) Lookup(ctx context.Context, addr netip.AddrPort) (Destination, error) {
	t := c.dest.Load()
	if !t.synced {
		var err error
		if t, err = c.waitSynced(ctx, addr); err != nil {
			return Destination{}, err
		}
	}
	return t.lookup(addr)
}

// waitSynced waits for the first snapshot.
func (c *Client) waitSynced(ctx context.Context, addr netip.AddrPort) (*table, error) {
	if !c.cfg.Destinations {
		return nil, fmt.Errorf("client: lookup %s: the destinations are not watched (Config.Destinations is false): %w", addr, ErrPending)
	}
	timer := time.NewTimer(c.cfg.PendingWait)
	defer timer.Stop()
	for {
		t := c.dest.Load()
		if t.synced {
			return t, nil
		}
		select {
		case <-t.updated:
		case <-ctx.Done():
			return nil, fmt.Errorf("client: lookup %s: no destinations snapshot from the controller before the caller gave up: %w (%w)", addr, ErrPending, ctx.Err())
		case <-timer.C:
			return nil, fmt.Errorf("client: lookup %s: no destinations snapshot from the controller within %s: %w", addr, c.cfg.PendingWait, ErrPending)
		}
	}
}

// Updated returns a channel closed at the next applied destinations change
// (each Updated call after it returns a new one).
func (c *Client) Updated() <-chan struct{} { return c.dest.Load().updated }

// watch runs one kind of stream until ctx ends: open, read until it fails,
// back off, again. stream reports whether it delivered a message, which
// resets the back-off: the stream was healthy, so its end is a new
// incident, not one more failure in a row.
func (c *Client) watch(ctx context.Context, kind string, stream func(context.Context) (bool, error)) {
	b := newBackoff(c.cfg.MinBackoff, c.cfg.MaxBackoff)
	for {
		// The stream's own context ends it (and frees it in grpc) when
		// stream returns for any reason.
		sctx, cancel := context.WithCancel(ctx)
		delivered, err := stream(sctx)
		cancel()
		c.m.connected.WithLabelValues(kind).Set(0)
		if ctx.Err() != nil {
			return
		}
		if delivered {
			b.reset()
		}
		wait := b.next()
		c.m.reconnects.WithLabelValues(kind).Inc()
		c.logEnd(kind, err, wait)
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
}

// logEnd logs why a stream ended. A controller refusing this pod
// (PermissionDenied, Unauthenticated) is an error an operator must see;
// the watch still retries, since the refusal may be a race with the pod's
// registration or a replica that has not caught up.
func (c *Client) logEnd(kind string, err error, wait time.Duration) {
	code := status.Code(err)
	level, msg := slog.LevelWarn, "control-plane stream ended; reconnecting"
	if code == codes.PermissionDenied || code == codes.Unauthenticated {
		level, msg = slog.LevelError, "the controller refused this pod's control-plane stream; retrying"
	}
	c.log.Log(context.Background(), level, msg, "kind", kind, "code", code.String(), "err", err, "retryIn", wait.String())
}

// request is the WatchRequest of a new stream (one each: a message is not
// shared between concurrent sends).
func (c *Client) request() *controlplanev1.WatchRequest {
	return &controlplanev1.WatchRequest{Namespace: c.cfg.Namespace, Pod: c.cfg.Pod}
}

// reject counts and logs what of a message was refused, in one line per
// message, so a bad snapshot cannot flood the log.
func (c *Client) reject(kind string, rej []rejection) {
	if len(rej) == 0 {
		return
	}
	for _, r := range rej {
		c.m.rejected.WithLabelValues(kind, r.reason).Inc()
	}
	const shown = 5
	sample := make([]string, 0, min(len(rej), shown))
	for _, r := range rej[:min(len(rej), shown)] {
		sample = append(sample, r.reason+" "+clip(r.address)+": "+r.detail)
	}
	c.log.Warn("parts of a controller message refused", "kind", kind, "count", len(rej), "first", sample)
}
