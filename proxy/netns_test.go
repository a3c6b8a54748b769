package proxy_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/mesh-dev/mesh/e2e/prereq"
	"github.com/mesh-dev/mesh/internal/intorstr"
	"github.com/mesh-dev/mesh/internal/netnstest"
	"github.com/mesh-dev/mesh/internal/tcpdump"
	"github.com/mesh-dev/mesh/internal/testpki"
	"github.com/mesh-dev/mesh/proxy"
	"github.com/mesh-dev/mesh/proxy/probe"
)

func TestMain(m *testing.M) {
	if runRole() {
		os.Exit(0)
	}
	os.Exit(m.Run())
}

const (
	ipA    = "198.18.250.1"
	ipB    = "198.18.250.2"
	appUID = 1000
)

var (
	clientID = spiffeid.RequireFromString("spiffe://cluster.local/ns/shop/sa/frontend")
	serverID = spiffeid.RequireFromString("spiffe://cluster.local/ns/shop/sa/backend")
	otherID  = spiffeid.RequireFromString("spiffe://cluster.local/ns/shop/sa/other")
)

// dests is a Destinations the test can change while proxies run.
type dests struct {
	mu sync.Mutex
	m  map[netip.AddrPort]spiffeid.ID
	// pods are meshed pods by address (any port), as the controller's
	// destinations name them; services are Service addresses.
	pods     map[netip.Addr]spiffeid.ID
	services map[netip.AddrPort][]proxy.Endpoint
	// unknown: no answer yet; Lookup waits a little (the client's
	// bounded wait), then fails.
	unknown bool
	updated chan struct{}
}

func (d *dests) Lookup(ctx context.Context, a netip.AddrPort) (proxy.Destination, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.unknown {
		d.mu.Unlock()
		select {
		case <-ctx.Done():
		case <-time.After(300 * time.Millisecond):
		}
		d.mu.Lock()
		return proxy.Destination{}, errors.New("destinations not known yet")
	}
	if eps, ok := d.services[a]; ok {
		return proxy.Destination{Service: true, Endpoints: eps}, nil
	}
	if id, ok := d.m[a]; ok {
		return proxy.Destination{Meshed: true, Identity: id}, nil
	}
	if id, ok := d.pods[a.Addr()]; ok {
		return proxy.Destination{Meshed: true, Identity: id}, nil
	}
	return proxy.Destination{}, nil
}

// Updated implements proxy.Notifier.
func (d *dests) Updated() <-chan struct{} {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.updated == nil {
		d.updated = make(chan struct{})
	}
	return d.updated
}

// change edits the destinations and tells the proxies.
func (d *dests) change(f func(d *dests)) {
	d.mu.Lock()
	defer d.mu.Unlock()
	f(d)
	if d.updated != nil {
		close(d.updated)
	}
	d.updated = make(chan struct{})
}

func (d *dests) expect(id spiffeid.ID) {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, port := range []uint16{httpPort, tcpPort, grpcPort, bannerPort} {
		d.m[netip.AddrPortFrom(netip.MustParseAddr(ipB), port)] = id
	}
}

// testAuthz is an Authorizer the test can change while proxies run.
type testAuthz struct {
	mu        sync.Mutex
	deny      map[spiffeid.ID]bool
	denyPaths map[string]bool
	seen      []proxy.Request
}

func (a *testAuthz) Authorize(r *proxy.Request) proxy.Decision {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.seen = append(a.seen, *r)
	if a.deny[r.Peer] {
		return proxy.Decision{Policy: "test/deny", Reason: "denied by the test"}
	}
	if r.HTTP != nil && a.denyPaths[r.HTTP.Path] {
		return proxy.Decision{Policy: "test/paths", Rule: "0", Reason: "path denied by the test"}
	}
	return proxy.Decision{Allow: true, Policy: "test/allow"}
}

func (a *testAuthz) denyPeer(id spiffeid.ID) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.deny[id] = true
}

// syncBuffer collects log lines from concurrent writers.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}
func (s *syncBuffer) String() string { s.mu.Lock(); defer s.mu.Unlock(); return s.b.String() }

// side is one pod: a namespace, its proxy and its metrics.
type side struct {
	ns   *netnstest.NS
	ip   netip.Addr
	src  *testpki.Source
	reg  *prometheus.Registry
	logs *syncBuffer
	stop func()
	// fallbacks counts the inbound HTTP/1.1 requests that went through
	// http.Transport rather than the direct way (export_test.go).
	fallbacks *atomic.Int64
}

// mesh is two pods, A (client) and B (server), joined by a veth pair, each
// with interception rules installed by the real mesh-proxy init and a
// proxy running in this process.
type mesh struct {
	a, b     *side
	ifA      string
	pki      *testpki.PKI
	dests    *dests
	authzB   *testAuthz
	bin      string // this test binary, runnable by the app user
	proxyBin string
	appLog   string // what B's app received, one JSON record per line
}

func newMesh(t *testing.T, inboundMode proxy.Mode) *mesh {
	t.Helper()
	return newMeshWith(t, inboundMode, nil)
}

// newMeshWith runs B's proxy with az deciding (m.authzB when nil).
func newMeshWith(t *testing.T, inboundMode proxy.Mode, az proxy.Authorizer) *mesh {
	t.Helper()
	return newMeshFunc(t, inboundMode, func(*mesh) proxy.Authorizer { return az })
}

// newMeshFunc runs B's proxy with the authorizer mkAuthz makes once the
// pods' identities exist (nil: m.authzB).
func newMeshFunc(t *testing.T, inboundMode proxy.Mode, mkAuthz func(*mesh) proxy.Authorizer) *mesh {
	t.Helper()
	prereq.Root(t)
	prereq.Command(t, "setpriv")
	prereq.Command(t, "iptables")
	m := &mesh{
		pki:      testpki.New(t, "cluster.local"),
		dests:    &dests{m: map[netip.AddrPort]spiffeid.ID{}},
		authzB:   &testAuthz{deny: map[spiffeid.ID]bool{}, denyPaths: map[string]bool{"/admin": true}},
		proxyBin: prereq.Bin(t, "mesh-proxy"),
		bin:      netnstest.SelfCopy(t),
	}
	m.dests.expect(serverID)
	nsA, nsB := netnstest.New(t, "a"), netnstest.New(t, "b")
	m.ifA, _ = netnstest.Link(t, nsA, nsB, ipA+"/24", ipB+"/24")
	for _, ns := range []*netnstest.NS{nsA, nsB} {
		ns.Run(t, m.proxyBin, "init", "--proxy-uid", "0")
	}
	m.a = &side{ns: nsA, ip: netip.MustParseAddr(ipA), src: m.pki.Source(t, clientID.String())}
	m.b = &side{ns: nsB, ip: netip.MustParseAddr(ipB), src: m.pki.Source(t, serverID.String())}
	m.startProxy(t, m.a, proxy.Strict, proxy.AllowAll{})
	az := mkAuthz(m)
	if az == nil {
		az = m.authzB
	}
	m.startProxy(t, m.b, inboundMode, az)
	m.startServer(t)
	return m
}

func (m *mesh) startProxy(t *testing.T, s *side, inbound proxy.Mode, az proxy.Authorizer) {
	t.Helper()
	s.reg = prometheus.NewRegistry()
	s.logs = &syncBuffer{}
	// The kubelet's HTTP probe of the app, rewritten to the admin port.
	health, err := probe.New(probe.Config{
		Probers: probe.Probers{"/app-health/app/readyz": {HTTPGet: &probe.HTTPGetAction{Path: "/healthz", Port: intorstr.FromInt32(httpPort)}}},
		Target:  s.ip, Dial: s.ns.Dial,
	})
	if err != nil {
		t.Fatal(err)
	}
	p, err := proxy.New(proxy.Config{
		Identity: s.src, TrustDomain: m.pki.TD, Destinations: m.dests, Authorizer: az,
		InboundMode: inbound, OutboundMode: proxy.Permissive,
		AppHealth: health,
		Listen:    s.ns.Listen, Dial: s.ns.Dial,
		Registerer: s.reg, Gatherer: s.reg,
		Logger:       slog.New(slog.NewJSONHandler(s.logs, nil)),
		DrainTimeout: 2 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	s.fallbacks = proxy.CountFallback(p)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	s.stop = func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("proxy in %s: %v", s.ns.Name, err)
		}
	}
	t.Cleanup(s.stop)
	admin := &http.Client{Timeout: time.Second, Transport: &http.Transport{DialContext: s.ns.Dial}}
	waitFor(t, 10*time.Second, "proxy admin /ready in "+s.ns.Name, func() error {
		resp, err := admin.Get("http://127.0.0.1:15020/ready")
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("status %s", resp.Status)
		}
		return nil
	})
}

func (m *mesh) startServer(t *testing.T) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	cmd := m.b.ns.Command(ctx, appUID, m.bin, "-test.run=^$")
	m.appLog = filepath.Join(filepath.Dir(m.bin), "received.jsonl")
	// The app runs unprivileged: give it a file it may write.
	if err := os.WriteFile(m.appLog, nil, 0o666); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(m.appLog, 0o666); err != nil {
		t.Fatal(err)
	}
	cmd.Env = append(os.Environ(), roleEnv+"=server", "APP_NAME=backend-0", "APP_LOG="+m.appLog)
	var out syncBuffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cancel()
		_ = cmd.Wait()
	})
	for _, port := range []int{httpPort, tcpPort, grpcPort, bannerPort} {
		waitFor(t, 10*time.Second, fmt.Sprintf("app port %d", port), func() error {
			c, err := m.b.ns.Dial(context.Background(), "tcp", fmt.Sprintf("%s:%d", ipB, port))
			if err != nil {
				return fmt.Errorf("%w (app output: %s)", err, out.String())
			}
			return c.Close()
		})
	}
}

// app runs a client role in A as the app user and returns its output.
func (m *mesh) app(t *testing.T, role string, env ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	cmd := m.a.ns.Command(ctx, appUID, m.bin, "-test.run=^$")
	cmd.Env = append(append(os.Environ(), roleEnv+"="+role), env...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return string(out), fmt.Errorf("%s: %w: %s", role, err, stderr.String())
	}
	return string(out), nil
}

func waitFor(t *testing.T, bound time.Duration, what string, f func() error) {
	t.Helper()
	deadline := time.Now().Add(bound)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s: %v", what, bound, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// metric sums the samples of a counter whose labels include want.
func metric(t testing.TB, reg *prometheus.Registry, name string, want map[string]string) float64 {
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var sum float64
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	next:
		for _, m := range mf.GetMetric() {
			labels := map[string]string{}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			for k, v := range want {
				if labels[k] != v {
					continue next
				}
			}
			if m.GetCounter() != nil {
				sum += m.GetCounter().GetValue()
			} else if m.GetGauge() != nil {
				sum += m.GetGauge().GetValue()
			}
		}
	}
	return sum
}

// TestTransparentMTLS: HTTP, a gRPC bidirectional stream and raw TCP echo
// cross from A's app to B's app through both proxies, with plain addresses,
// and B's proxy saw A's identity over TLS 1.3.
func TestTransparentMTLS(t *testing.T) {
	m := newMesh(t, proxy.Strict)
	// The app learns the caller's verified identity; a header the caller
	// sent under the same name is replaced, not passed on.
	out, err := m.app(t, "http", fmt.Sprintf("TARGET=http://%s:%d/orders", ipB, httpPort), "SPOOF=spiffe://cluster.local/ns/shop/sa/admin")
	if want := "hello from backend-0 path=/orders peer=" + clientID.String(); err != nil || out != want {
		t.Fatalf("HTTP through the mesh = %q, %v; want %q", out, err, want)
	}
	out, err = m.app(t, "ws", fmt.Sprintf("TARGET=ws://%s:%d/ws", ipB, httpPort), "MESSAGE=frame")
	if err != nil || out != "frame-0,frame-1,frame-2" {
		t.Fatalf("WebSocket through the mesh = %q, %v", out, err)
	}
	out, err = m.app(t, "grpc", fmt.Sprintf("TARGET=%s:%d", ipB, grpcPort), "MESSAGE=ping")
	if err != nil || out != "ping-0,ping-1,ping-2,ping-3,ping-4" {
		t.Fatalf("gRPC stream through the mesh = %q, %v", out, err)
	}
	// A protocol whose server speaks first: the inbound proxy waits for
	// client bytes to detect HTTP, gives up, and passes it opaque.
	out, err = m.app(t, "banner", fmt.Sprintf("TARGET=%s:%d", ipB, bannerPort))
	if err != nil || out != "220 backend-0 ready|HELO" {
		t.Fatalf("server-first protocol through the mesh = %q, %v", out, err)
	}
	out, err = m.app(t, "tcp", fmt.Sprintf("TARGET=%s:%d", ipB, tcpPort), "MESSAGE=raw bytes \x01\x02\xff end")
	if err != nil || out != "raw bytes \x01\x02\xff end" {
		t.Fatalf("TCP echo through the mesh = %q, %v", out, err)
	}
	if n := metric(t, m.b.reg, "mesh_proxy_connections_opened_total", map[string]string{"direction": "inbound", "peer": clientID.String(), "tls": "mtls"}); n < 4 {
		t.Fatalf("B's proxy counted %v mTLS connections from %s, want ≥ 4", n, clientID)
	}
	if n := metric(t, m.b.reg, "mesh_proxy_http_requests_total", map[string]string{"direction": "inbound", "method": "GET", "status_class": "2xx"}); n != 1 {
		t.Fatalf("B's proxy counted %v GET 2xx requests, want 1 (the plain GET)", n)
	}
	// The gRPC stream's request ends when the client has gone: wait for it.
	waitFor(t, 5*time.Second, "the gRPC stream counted as one POST", func() error {
		if n := metric(t, m.b.reg, "mesh_proxy_http_requests_total", map[string]string{"direction": "inbound", "method": "POST", "status_class": "2xx"}); n != 1 {
			return fmt.Errorf("%v POST 2xx requests", n)
		}
		return nil
	})
	if n := metric(t, m.a.reg, "mesh_proxy_connections_opened_total", map[string]string{"direction": "outbound", "peer": serverID.String(), "tls": "mtls"}); n < 3 {
		t.Fatalf("A's proxy counted %v mTLS connections to %s, want ≥ 3", n, serverID)
	}
	if n := metric(t, m.b.reg, "mesh_proxy_tls_handshakes_total", map[string]string{"direction": "inbound", "version": "1.3"}); n < 3 {
		t.Fatalf("B's proxy counted %v TLS 1.3 handshakes, want ≥ 3", n)
	}
}

// TestCaptureShowsOnlyTLS captures the link between the pods while the app
// sends a unique marker: the marker never appears on the wire, and every
// byte of every TCP payload is part of a TLS record.
func TestCaptureShowsOnlyTLS(t *testing.T) {
	prereq.Command(t, "tcpdump")
	m := newMesh(t, proxy.Strict)
	capture := tcpdump.Start(t, m.a.ns.Name, m.ifA, "tcp")

	marker := fmt.Sprintf("MARKER-%d-secret", time.Now().UnixNano())
	if out, err := m.app(t, "http", fmt.Sprintf("TARGET=http://%s:%d/%s", ipB, httpPort, marker)); err != nil || !strings.Contains(out, marker) {
		t.Fatalf("HTTP through the mesh = %q, %v", out, err)
	}
	if out, err := m.app(t, "tcp", fmt.Sprintf("TARGET=%s:%d", ipB, tcpPort), "MESSAGE="+marker); err != nil || out != marker {
		t.Fatalf("TCP echo through the mesh = %q, %v", out, err)
	}
	if err := capture.Stop(); err != nil {
		t.Fatal(err)
	}

	raw, err := os.ReadFile(capture.Path)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(raw, []byte(marker)) {
		t.Fatal("the marker crossed the link in the clear")
	}
	streams := tcpStreams(t, raw)
	if len(streams) < 4 {
		t.Fatalf("captured %d TCP streams with payload, want at least 4 (2 connections × 2 directions)", len(streams))
	}
	for key, payload := range streams {
		checkTLSRecords(t, key, payload)
	}
}

// tcpStreams parses a pcap of Ethernet/IPv4/TCP and returns each
// direction's payload, in capture order.
func tcpStreams(t *testing.T, raw []byte) map[string][]byte {
	t.Helper()
	if len(raw) < 24 {
		t.Fatal("pcap too short")
	}
	out := map[string][]byte{}
	for off := 24; off+16 <= len(raw); {
		incl := int(uint32(raw[off+8]) | uint32(raw[off+9])<<8 | uint32(raw[off+10])<<16 | uint32(raw[off+11])<<24)
		pkt := raw[off+16 : off+16+incl]
		off += 16 + incl
		if len(pkt) < 14+20 || pkt[12] != 0x08 || pkt[13] != 0x00 {
			continue
		}
		ip := pkt[14:]
		ihl := int(ip[0]&0x0f) * 4
		total := int(ip[2])<<8 | int(ip[3])
		if ip[9] != 6 || total > len(ip) {
			continue
		}
		tcp := ip[ihl:total]
		doff := int(tcp[12]>>4) * 4
		payload := tcp[doff:]
		if len(payload) == 0 {
			continue
		}
		key := fmt.Sprintf("%d.%d.%d.%d:%d>%d.%d.%d.%d:%d", ip[12], ip[13], ip[14], ip[15], int(tcp[0])<<8|int(tcp[1]), ip[16], ip[17], ip[18], ip[19], int(tcp[2])<<8|int(tcp[3]))
		out[key] = append(out[key], payload...)
	}
	return out
}

// checkTLSRecords walks a stream as TLS records: every byte must belong to
// a record of a TLS content type; the client's first record is a
// ClientHello offering TLS 1.3; after the handshake only encrypted
// application-data records flow.
func checkTLSRecords(t *testing.T, key string, b []byte) {
	t.Helper()
	n := 0
	for len(b) > 0 {
		if len(b) < 5 {
			t.Fatalf("%s: %d stray bytes after %d records", key, len(b), n)
		}
		typ, length := b[0], int(b[3])<<8|int(b[4])
		if b[1] != 0x03 || (typ != 0x14 && typ != 0x15 && typ != 0x16 && typ != 0x17) {
			t.Fatalf("%s: record %d is not TLS (header % x)", key, n, b[:5])
		}
		if len(b) < 5+length {
			t.Fatalf("%s: record %d truncated", key, n)
		}
		if n == 0 && typ == 0x16 && b[5] == 0x01 && !bytes.Contains(b[5:5+length], []byte{0x00, 0x2b}) {
			t.Fatalf("%s: ClientHello without supported_versions (no TLS 1.3)", key)
		}
		if n >= 3 && typ == 0x16 {
			t.Fatalf("%s: plaintext handshake record after the handshake", key)
		}
		b = b[5+length:]
		n++
	}
}

// dialB connects from A's namespace as root, which the interception rules
// let through unproxied, straight to B's app port: B's inbound proxy
// receives it as it would any client's.
func (m *mesh) dialB(t *testing.T) net.Conn {
	t.Helper()
	c, err := m.a.ns.Dial(t.Context(), "tcp", fmt.Sprintf("%s:%d", ipB, httpPort))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	return c
}

// request sends one HTTP request on c and returns what came back.
func request(c net.Conn, path string) string {
	fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: backend\r\nConnection: close\r\n\r\n", path)
	b, _ := io.ReadAll(c)
	return string(b)
}

func meshTLS(t *testing.T, cert *tls.Certificate, alpn string) *tls.Config {
	cfg := &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS13, NextProtos: []string{alpn}}
	if cert != nil {
		cfg.Certificates = []tls.Certificate{*cert}
	}
	return cfg
}

func tlsCert(t *testing.T, pki *testpki.PKI, id spiffeid.ID) *tls.Certificate {
	svid := pki.SVID(t, id.String())
	c := &tls.Certificate{PrivateKey: svid.PrivateKey}
	for _, x := range svid.Certificates {
		c.Certificate = append(c.Certificate, x.Raw)
	}
	return c
}

// TestStrictRefusals: in strict mode B's proxy refuses a plaintext client,
// a client with a certificate from another CA, a client with no
// certificate, and TLS without the mesh ALPN; none reaches the app. A
// kubelet probe from the node address to the probe path gets through, and
// nothing else from the node does.
func TestStrictRefusals(t *testing.T) {
	m := newMesh(t, proxy.Strict)
	other := testpki.New(t, "cluster.local") // same trust domain name, another CA

	if got := request(m.dialB(t), "/"); strings.Contains(got, "hello") {
		t.Fatalf("plaintext reached the app in strict mode: %q", got)
	}
	cases := []struct {
		name string
		cfg  *tls.Config
	}{
		{"certificate from another CA", meshTLS(t, tlsCert(t, other, clientID), proxy.ALPN)},
		{"no certificate", meshTLS(t, nil, proxy.ALPN)},
		{"TLS without the mesh ALPN", meshTLS(t, tlsCert(t, m.pki, clientID), "h2")},
	}
	for _, tc := range cases {
		conn := tls.Client(m.dialB(t), tc.cfg)
		// TLS 1.3 clients finish before the server checks their
		// certificate: the refusal shows on the first read.
		if got := request(conn, "/"); strings.Contains(got, "hello") {
			t.Fatalf("%s reached the app: %q", tc.name, got)
		}
	}
	// A TLS refusal is counted after crypto/tls has sent its alert, so the
	// client can read the alert before the count moves: wait for it.
	waitFor(t, 5*time.Second, "B's proxy to count 4 refusals", func() error {
		if n := metric(t, m.b.reg, "mesh_proxy_connections_refused_total", map[string]string{"direction": "inbound"}); n < 4 {
			return fmt.Errorf("B's proxy refused %v connections, want ≥ 4", n)
		}
		return nil
	})
	if n := metric(t, m.b.reg, "mesh_proxy_connections_opened_total", map[string]string{"direction": "inbound"}); n != 0 {
		t.Fatalf("B's proxy opened %v connections to the app", n)
	}

	// No plaintext exception for the kubelet: its probe from the node
	// (A's address plays the node) to the app's probe path is refused too,
	// and reaches the app only as the proxy's own probe, through the admin
	// port's /app-health/.
	if got := request(m.dialB(t), "/healthz"); strings.Contains(got, "hello") {
		t.Fatalf("a plaintext probe from the node reached the app: %q", got)
	}
	if got := m.received(t); len(got) != 0 {
		t.Fatalf("the app received %+v from plaintext clients", got)
	}
	c, err := m.a.ns.Dial(t.Context(), "tcp", fmt.Sprintf("%s:15020", ipB))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if got := request(c, "/app-health/app/readyz"); !strings.HasPrefix(got, "HTTP/1.1 200") {
		t.Fatalf("the rewritten probe through the admin port = %q, want 200", got)
	}
	got := m.received(t)
	if len(got) != 1 || got[0].Method != "GET" || got[0].RequestURI != "/healthz" || got[0].Header.Get("X-Mesh-Peer-Identity") != "" {
		t.Fatalf("the app received %+v; want exactly the proxy's GET /healthz probe", got)
	}
}

// received reads what B's app has received so far.
func (m *mesh) received(t *testing.T) []received {
	t.Helper()
	b, err := os.ReadFile(m.appLog)
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	var out []received
	for _, line := range bytes.Split(bytes.TrimSpace(b), []byte("\n")) {
		if len(line) == 0 {
			continue
		}
		var r received
		if err := json.Unmarshal(line, &r); err != nil {
			t.Fatalf("app log line %q: %v", line, err)
		}
		out = append(out, r)
	}
	return out
}

// resetReceived forgets what the app received so far.
func (m *mesh) resetReceived(t *testing.T) {
	t.Helper()
	if err := os.Truncate(m.appLog, 0); err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
}

// TestPermissiveAcceptsPlaintext: in permissive mode plaintext reaches the
// app, as unauthenticated.
func TestPermissiveAcceptsPlaintext(t *testing.T) {
	m := newMesh(t, proxy.Permissive)
	if got := request(m.dialB(t), "/plain"); !strings.Contains(got, "hello from backend-0 path=/plain peer=\n") && !strings.HasSuffix(got, "path=/plain peer=") {
		t.Fatalf("plaintext refused in permissive mode: %q", got)
	}
	if n := metric(t, m.b.reg, "mesh_proxy_connections_opened_total", map[string]string{"direction": "inbound", "peer": "unauthenticated", "tls": "plaintext"}); n != 1 {
		t.Fatalf("unauthenticated plaintext connections = %v, want 1", n)
	}
	// mTLS still works and is still authenticated.
	if out, err := m.app(t, "http", fmt.Sprintf("TARGET=http://%s:%d/x", ipB, httpPort)); err != nil || !strings.Contains(out, "hello") {
		t.Fatalf("mTLS in permissive mode: %q %v", out, err)
	}
}

// TestOutboundWrongIdentity: when the peer at the destination presents a
// valid SVID of our trust domain but not the identity expected there, A's
// proxy refuses it: an opaque connection is closed, and an HTTP request
// is answered 503 by A's proxy itself, naming why. B's app gets nothing.
func TestOutboundWrongIdentity(t *testing.T) {
	m := newMesh(t, proxy.Strict)
	m.dests.expect(otherID)
	out, err := m.app(t, "http", fmt.Sprintf("TARGET=http://%s:%d/", ipB, httpPort))
	if err != nil || !strings.HasPrefix(out, "mesh: wrong_identity: ") || strings.Contains(out, "hello from") {
		t.Fatalf("HTTP to a peer with the wrong identity: %q, %v; want the proxy's wrong_identity answer", out, err)
	}
	if out, err := m.app(t, "tcp", fmt.Sprintf("TARGET=%s:%d", ipB, tcpPort), "MESSAGE=hi"); err == nil && out != "" {
		t.Fatalf("TCP reached a peer with the wrong identity: %q", out)
	}
	if got := m.received(t); len(got) != 0 {
		t.Fatalf("B's app received %+v", got)
	}
	if n := metric(t, m.a.reg, "mesh_proxy_tls_handshake_errors_total", map[string]string{"direction": "outbound", "reason": "wrong_identity"}); n != 2 {
		t.Fatalf("wrong_identity handshake errors = %v, want 2 (one HTTP, one TCP); logs:\n%s", n, m.a.logs.String())
	}
}

// TestUnknownDestinationRefused: while the destinations are not known
// (no snapshot from the controller yet), the outbound side refuses the
// connection instead of dialling it in plaintext, even in permissive
// outbound mode: nothing reaches B's app, not even as unauthenticated.
func TestUnknownDestinationRefused(t *testing.T) {
	m := newMesh(t, proxy.Permissive)
	m.dests.change(func(d *dests) { d.unknown = true })
	if out, err := m.app(t, "http", fmt.Sprintf("TARGET=http://%s:%d/unknown", ipB, httpPort)); err == nil {
		t.Fatalf("reached B with no answer about it: %q", out)
	}
	if got := m.received(t); len(got) != 0 {
		t.Fatalf("B's app received %+v", got)
	}
	if n := metric(t, m.a.reg, "mesh_proxy_connections_refused_total", map[string]string{"direction": "outbound", "reason": "destination_unknown"}); n != 1 {
		t.Fatalf("destination_unknown refusals = %v, want 1", n)
	}
	m.dests.change(func(d *dests) { d.unknown = false })
	if out, err := m.app(t, "http", fmt.Sprintf("TARGET=http://%s:%d/known", ipB, httpPort)); err != nil || !strings.Contains(out, "peer=spiffe://") {
		t.Fatalf("once known, over mTLS: %q, %v", out, err)
	}
}

// TestResumedSessionRechecked: reconnects resume TLS sessions, and a
// resumed session is still checked: a peer whose identity is no longer the
// one expected is refused by the client, and a client no longer authorized
// is refused by the server.
func TestResumedSessionRechecked(t *testing.T) {
	m := newMesh(t, proxy.Strict)
	// Opaque TCP: a handshake per application connection (HTTP requests
	// would share one pooled connection instead).
	target := fmt.Sprintf("TARGET=%s:%d", ipB, tcpPort)
	for i := range 2 {
		if out, err := m.app(t, "tcp", target, "MESSAGE=hi"); err != nil || out != "hi" {
			t.Fatalf("connection %d: %q, %v", i, out, err)
		}
	}
	resumed := map[string]string{"direction": "outbound", "resumed": "true"}
	if n := metric(t, m.a.reg, "mesh_proxy_tls_handshakes_total", resumed); n < 1 {
		t.Fatalf("control: the second connection did not resume (resumed handshakes = %v)", n)
	}

	// The client is no longer authorized: refused after a resumed handshake.
	m.authzB.denyPeer(clientID)
	before := metric(t, m.b.reg, "mesh_proxy_tls_handshakes_total", map[string]string{"direction": "inbound", "resumed": "true"})
	if out, _ := m.app(t, "tcp", target, "MESSAGE=hi"); out != "" {
		t.Fatalf("a resumed session of a denied client got %q", out)
	}
	if after := metric(t, m.b.reg, "mesh_proxy_tls_handshakes_total", map[string]string{"direction": "inbound", "resumed": "true"}); after <= before {
		t.Fatal("the denied connection did not resume, so it proves nothing about resumption")
	}
	if n := metric(t, m.b.reg, "mesh_proxy_authz_decisions_total", map[string]string{"decision": "deny", "policy": "test/deny"}); n != 1 {
		t.Fatalf("deny decisions = %v, want 1", n)
	}

	// The server's identity is no longer the one expected at its address:
	// the client refuses the resumed session.
	m.dests.expect(otherID)
	if out, _ := m.app(t, "tcp", target, "MESSAGE=hi"); out != "" {
		t.Fatalf("a resumed session to the wrong identity was accepted: %q", out)
	}
	if !strings.Contains(m.a.logs.String(), "(resumed session)") {
		t.Fatalf("the refused connection was not a resumed session; logs:\n%s", m.a.logs.String())
	}
}

// TestRotationUnderLoad rotates both proxies' SVIDs while a long-lived
// connection and a steady stream of requests run: nothing fails, and new
// connections present the new certificate.
func TestRotationUnderLoad(t *testing.T) {
	m := newMesh(t, proxy.Strict)
	type result struct {
		out string
		err error
	}
	done := make(chan result, 1)
	go func() {
		out, err := m.app(t, "soak", fmt.Sprintf("TARGET_HTTP=http://%s:%d/soak", ipB, httpPort), fmt.Sprintf("TARGET_TCP=%s:%d", ipB, tcpPort), "DURATION=4s")
		done <- result{out, err}
	}()
	time.Sleep(time.Second) // let the stream run on the first SVIDs
	m.a.src.Rotate(t)
	newB := m.b.src.Rotate(t)
	r := <-done
	if r.err != nil {
		t.Fatal(r.err)
	}
	var res soakResult
	if err := json.Unmarshal([]byte(r.out), &res); err != nil {
		t.Fatalf("soak output %q: %v", r.out, err)
	}
	// Bounds loose enough for a loaded machine: what matters is zero
	// failures across the rotation.
	if res.Failures != 0 || len(res.Errors) != 0 || res.LongLivedRounds != res.Requests || res.Requests < 10 {
		t.Fatalf("soak across rotation: %+v", res)
	}

	// A new connection gets B's new certificate.
	conn := tls.Client(m.dialB(t), meshTLS(t, tlsCert(t, m.pki, clientID), proxy.ALPN))
	if err := conn.Handshake(); err != nil {
		t.Fatal(err)
	}
	if got, want := conn.ConnectionState().PeerCertificates[0].SerialNumber, newB.Certificates[0].SerialNumber; got.Cmp(want) != 0 {
		t.Fatalf("new connection got serial %s, want the rotated %s", got, want)
	}
}

// TestDenials: the authorization hook decides each HTTP request with its
// method and path, and a denial is a 403 naming the policy for HTTP,
// PERMISSION_DENIED for gRPC, and for opaque TCP a connection closed before
// a byte reaches the app.
func TestDenials(t *testing.T) {
	m := newMesh(t, proxy.Strict)
	base := fmt.Sprintf("http://%s:%d", ipB, httpPort)
	if out, err := m.app(t, "http", "TARGET="+base+"/admin"); err != nil || out != "mesh: denied by policy test/paths\n" {
		t.Fatalf("GET /admin = %q, %v; want the 403 body", out, err)
	}
	if out, err := m.app(t, "http", "TARGET="+base+"/ok"); err != nil || !strings.HasPrefix(out, "hello") {
		t.Fatalf("GET /ok = %q, %v", out, err)
	}
	m.authzB.mu.Lock()
	var paths []string
	for _, r := range m.authzB.seen {
		if r.HTTP != nil {
			paths = append(paths, r.HTTP.Method+" "+r.HTTP.Path+" "+r.Protocol+" "+r.Peer.String())
		}
	}
	m.authzB.mu.Unlock()
	if want := []string{"GET /admin http1 " + clientID.String(), "GET /ok http1 " + clientID.String()}; strings.Join(paths, ";") != strings.Join(want, ";") {
		t.Fatalf("the hook saw %q, want %q", paths, want)
	}
	if n := metric(t, m.b.reg, "mesh_proxy_http_requests_total", map[string]string{"method": "GET", "status_class": "4xx"}); n != 1 {
		t.Fatalf("GET 4xx = %v, want 1", n)
	}

	m.authzB.denyPeer(clientID)
	out, err := m.app(t, "grpc", fmt.Sprintf("TARGET=%s:%d", ipB, grpcPort), "MESSAGE=x")
	if err == nil || !strings.Contains(err.Error(), "PermissionDenied") || !strings.Contains(err.Error(), "test/deny") {
		t.Fatalf("denied gRPC call = %q, %v; want PermissionDenied naming the policy\nA logs:\n%s\nB logs:\n%s", out, err, m.a.logs.String(), m.b.logs.String())
	}

	appConns := metric(t, m.b.reg, "mesh_proxy_connections_opened_total", map[string]string{"direction": "inbound", "tls": "mtls"})
	denied := metric(t, m.b.reg, "mesh_proxy_connections_refused_total", map[string]string{"reason": "denied_by_policy"})
	if out, err := m.app(t, "tcp", fmt.Sprintf("TARGET=%s:%d", ipB, tcpPort), "MESSAGE=nothing"); err == nil && out != "" {
		t.Fatalf("denied TCP echoed %q", out)
	}
	if n := metric(t, m.b.reg, "mesh_proxy_connections_opened_total", map[string]string{"direction": "inbound", "tls": "mtls"}); n != appConns {
		t.Fatal("a denied TCP connection was passed to the app")
	}
	if n := metric(t, m.b.reg, "mesh_proxy_connections_refused_total", map[string]string{"reason": "denied_by_policy"}); n <= denied {
		t.Fatal("the TCP denial was not counted")
	}
}
