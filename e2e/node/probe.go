package node

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// probeUserAgent is what the kubelet's HTTP prober sends.
const probeUserAgent = "kube-probe/1.37"

// runProbe runs a network probe's handler once against a container of the
// pod at host (its address), from the node, as the kubelet's prober does: an HTTP
// GET answered 200-399, a TCP connection accepted, or a gRPC health check
// answered SERVING, within timeoutSeconds. A nil error is a success.
func runProbe(ctx context.Context, host string, c corev1.Container, p *corev1.Probe) error {
	timeout := time.Duration(max(p.TimeoutSeconds, 1)) * time.Second
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	switch {
	case p.HTTPGet != nil:
		return httpProbe(ctx, host, c, p.HTTPGet)
	case p.TCPSocket != nil:
		return tcpProbe(ctx, host, c, p.TCPSocket)
	case p.GRPC != nil:
		return grpcProbe(ctx, host, p.GRPC)
	case p.Exec != nil:
		return errors.New("node: an exec probe runs in its container (execProbe), not from the node")
	}
	return errors.New("node: probe has no handler")
}

// probePort resolves a probe's port, by number or by the name of one of
// the container's ports.
func probePort(c corev1.Container, port intstr.IntOrString) (int, error) {
	if port.Type == intstr.Int {
		if port.IntVal < 1 || port.IntVal > 65535 {
			return 0, fmt.Errorf("node: probe port %d is out of range", port.IntVal)
		}
		return int(port.IntVal), nil
	}
	for _, cp := range c.Ports {
		if cp.Name == port.StrVal {
			return int(cp.ContainerPort), nil
		}
	}
	if n, err := strconv.Atoi(port.StrVal); err == nil && n > 0 && n <= 65535 {
		return n, nil
	}
	return 0, fmt.Errorf("node: probe port %q is not a port of container %s", port.StrVal, c.Name)
}

func httpProbe(ctx context.Context, host string, c corev1.Container, g *corev1.HTTPGetAction) error {
	port, err := probePort(c, g.Port)
	if err != nil {
		return err
	}
	if g.Host != "" {
		host = g.Host
	}
	scheme := "http"
	if g.Scheme == corev1.URISchemeHTTPS {
		scheme = "https"
	}
	u := &url.URL{Scheme: scheme, Host: net.JoinHostPort(host, strconv.Itoa(port))}
	ref, err := url.Parse(g.Path)
	if err != nil {
		return fmt.Errorf("node: http probe path %q: %w", g.Path, err)
	}
	u = u.ResolveReference(ref)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return fmt.Errorf("node: http probe: %w", err)
	}
	req.Header.Set("User-Agent", probeUserAgent)
	req.Header.Set("Accept", "*/*")
	for _, h := range g.HTTPHeaders {
		if h.Name == "Host" {
			req.Host = h.Value
			continue
		}
		req.Header.Set(h.Name, h.Value)
	}
	// As the kubelet: no connection reuse between probes, and HTTPS is
	// not verified (the probe checks liveness, not identity).
	client := &http.Client{
		Transport: &http.Transport{DisableKeepAlives: true, TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}, //nolint:gosec // the kubelet does not verify probe targets
		CheckRedirect: func(req *http.Request, via []*http.Request) error {
			if len(via) >= 10 {
				return errors.New("too many redirects")
			}
			return nil
		},
	}
	resp, err := client.Do(req)
	if err != nil {
		return fmt.Errorf("node: http probe %s: %w", u, err)
	}
	resp.Body.Close()
	if resp.StatusCode < 200 || resp.StatusCode >= 400 {
		return fmt.Errorf("node: http probe %s: status %d", u, resp.StatusCode)
	}
	return nil
}

func tcpProbe(ctx context.Context, host string, c corev1.Container, s *corev1.TCPSocketAction) error {
	port, err := probePort(c, s.Port)
	if err != nil {
		return err
	}
	if s.Host != "" {
		host = s.Host
	}
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", net.JoinHostPort(host, strconv.Itoa(port)))
	if err != nil {
		return fmt.Errorf("node: tcp probe: %w", err)
	}
	return conn.Close()
}

func grpcProbe(ctx context.Context, host string, g *corev1.GRPCAction) error {
	if g.Port < 1 || g.Port > 65535 {
		return fmt.Errorf("node: grpc probe port %d is out of range", g.Port)
	}
	addr := net.JoinHostPort(host, strconv.Itoa(int(g.Port)))
	conn, err := grpc.NewClient("passthrough:///"+addr, grpc.WithTransportCredentials(insecure.NewCredentials()), grpc.WithUserAgent(probeUserAgent))
	if err != nil {
		return fmt.Errorf("node: grpc probe %s: %w", addr, err)
	}
	defer conn.Close()
	req := &healthpb.HealthCheckRequest{}
	if g.Service != nil {
		req.Service = *g.Service
	}
	resp, err := healthpb.NewHealthClient(conn).Check(ctx, req)
	if err != nil {
		return fmt.Errorf("node: grpc probe %s: %w", addr, err)
	}
	if resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		return fmt.Errorf("node: grpc probe %s: status %s", addr, resp.GetStatus())
	}
	return nil
}

// prober keeps one probe's schedule and thresholds for a running
// container, as the kubelet's probe worker does.
type prober struct {
	spec *corev1.Probe
	// eager probes every eagerPeriod until the first success, instead of
	// every periodSeconds: a readiness probe's first attempt usually
	// comes before the program listens, and the kubelet's period (10 s
	// by default) would hold every pod unready that long.
	eager      bool
	next       time.Time
	succ, fail int32
	ok         bool // the probe's current verdict
	passedOnce bool
}

const eagerPeriod = 500 * time.Millisecond

func newProber(p *corev1.Probe, started time.Time, initial, eager bool) *prober {
	if p == nil {
		return nil
	}
	return &prober{spec: p, eager: eager, ok: initial, next: started.Add(time.Duration(max(p.InitialDelaySeconds, 0)) * time.Second)}
}

func (p *prober) due(now time.Time) bool { return !now.Before(p.next) }

// record counts a result and reports whether the verdict changed: it turns
// true after successThreshold successes in a row and false after
// failureThreshold failures in a row (defaults 1 and 3).
func (p *prober) record(success bool, now time.Time) bool {
	period := time.Duration(p.spec.PeriodSeconds) * time.Second
	if p.spec.PeriodSeconds <= 0 {
		period = 10 * time.Second
	}
	succThreshold, failThreshold := max(p.spec.SuccessThreshold, 1), p.failureThreshold()
	was := p.ok
	if success {
		p.succ, p.fail = p.succ+1, 0
		if p.succ >= succThreshold {
			p.ok, p.passedOnce = true, true
		}
	} else {
		p.succ, p.fail = 0, p.fail+1
		if p.fail >= failThreshold {
			p.ok = false
		}
	}
	if p.eager && !p.passedOnce {
		period = min(period, eagerPeriod)
	}
	p.next = now.Add(period)
	return p.ok != was
}

func (p *prober) failureThreshold() int32 {
	if p.spec.FailureThreshold <= 0 {
		return 3
	}
	return p.spec.FailureThreshold
}

// failed reports whether the probe has failed failureThreshold times in a
// row: a startup or liveness probe then has the container restarted.
func (p *prober) failed() bool { return p.fail >= p.failureThreshold() }
