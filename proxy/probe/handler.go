package probe

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"time"
)

// Config configures a Handler.
type Config struct {
	// Probers are the probes to serve. Each entry is checked as Parse
	// checks it. Zero means none: every path answers 404.
	Probers Probers
	// Target is the address probes connect to: the pod's own IP, so apps
	// bound to the pod IP answer, and the connection, opened by the proxy's
	// UID, is not intercepted. Required; an address with a zone, the
	// unspecified address and multicast are refused, IPv4-mapped IPv6 is
	// unmapped.
	Target netip.Addr
	// Dial opens connections (tests dial inside a network namespace). Zero
	// means a net.Dialer. It is only ever called with Target's address.
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
	// DefaultTimeout bounds a probe whose TimeoutSeconds is zero. Zero means
	// 1s, the kubelet's default.
	DefaultTimeout time.Duration
}

// Handler answers the kubelet's GETs on the rewritten probe paths by
// performing the original probe against the app. It implements http.Handler
// and is safe for concurrent use.
type Handler struct {
	target netip.Addr
	dialFn func(ctx context.Context, network, addr string) (net.Conn, error)
	checks map[string]check
	// client probes over HTTP/1.1, h2cClient over cleartext HTTP/2.
	client, h2cClient *http.Client
}

// check is one compiled prober.
type check struct {
	timeout time.Duration
	run     func(ctx context.Context) error
}

// New checks cfg and compiles its probers.
func New(cfg Config) (*Handler, error) {
	if !cfg.Target.IsValid() {
		return nil, errors.New("probe: Target is required: the pod's IP")
	}
	t := cfg.Target.Unmap()
	if t.Zone() != "" || t.IsUnspecified() || t.IsMulticast() {
		return nil, fmt.Errorf("probe: Target %s is not a pod IP", cfg.Target)
	}
	if cfg.DefaultTimeout < 0 {
		return nil, fmt.Errorf("probe: DefaultTimeout %s is negative", cfg.DefaultTimeout)
	}
	if cfg.DefaultTimeout == 0 {
		cfg.DefaultTimeout = time.Second
	}
	h := &Handler{target: t, dialFn: cfg.Dial, checks: make(map[string]check, len(cfg.Probers))}
	if h.dialFn == nil {
		h.dialFn = (&net.Dialer{}).DialContext
	}
	h.client, h.h2cClient = newHTTPClient(h.dial, false), newHTTPClient(h.dial, true)
	for path, p := range cfg.Probers {
		if err := validate(path, p); err != nil {
			return nil, err
		}
		c := check{timeout: cfg.DefaultTimeout}
		if p.TimeoutSeconds > 0 {
			c.timeout = time.Duration(p.TimeoutSeconds) * time.Second
		}
		switch {
		case p.HTTPGet != nil:
			run, err := h.httpCheck(p.HTTPGet)
			if err != nil {
				return nil, fmt.Errorf("probe: entry %q: %w", path, err)
			}
			c.run = run
		case p.TCPSocket != nil:
			c.run = h.tcpCheck(p.TCPSocket.Port.IntVal)
		default:
			c.run = h.grpcCheck(p.GRPC)
		}
		h.checks[path] = c
	}
	return h, nil
}

// ServeHTTP answers 200 when the probe at the request's path succeeds and
// 503 with a short reason when it fails; 404 for a path that is not
// configured (matched exactly, encoded form included), 405 for a method
// other than GET. Nothing of the request (headers, query, body) reaches the
// app: each probe builds its own.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	c, ok := h.checks[r.URL.EscapedPath()]
	if !ok {
		w.WriteHeader(http.StatusNotFound)
		fmt.Fprintln(w, "probe: no app probe at this path")
		return
	}
	if r.Method != http.MethodGet {
		w.Header().Set("Allow", http.MethodGet)
		w.WriteHeader(http.StatusMethodNotAllowed)
		fmt.Fprintln(w, "probe: only GET")
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), c.timeout)
	defer cancel()
	if err := c.run(ctx); err != nil {
		w.WriteHeader(http.StatusServiceUnavailable)
		fmt.Fprintln(w, reason(ctx, c.timeout, err))
		return
	}
	fmt.Fprintln(w, "ok")
}

// reason is the one line the kubelet gets back on failure.
func reason(ctx context.Context, timeout time.Duration, err error) string {
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		return fmt.Sprintf("probe: timed out after %s: %s", timeout, strings.TrimPrefix(err.Error(), "probe: "))
	}
	return err.Error()
}

// dial is the only way probes open connections: it refuses any address but
// Target's, so no redirect or resolver can point a probe elsewhere.
func (h *Handler) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	ap, err := netip.ParseAddrPort(addr)
	if err != nil || ap.Addr().Unmap() != h.target {
		return nil, fmt.Errorf("probe: refusing to dial %q: probes reach only the pod's own address %s", addr, h.target)
	}
	return h.dialFn(ctx, network, addr)
}

// addr is Target with port, as dial expects it.
func (h *Handler) addr(port int32) string {
	return netip.AddrPortFrom(h.target, uint16(port)).String()
}
