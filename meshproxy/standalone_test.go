package meshproxy_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/mesh-dev/mesh/internal/testpki"
	"github.com/mesh-dev/mesh/meshproxy"
	"github.com/mesh-dev/mesh/proxy"
)

const (
	webID      = "spiffe://example.org/ns/shop/sa/web"
	apiID      = "spiffe://example.org/ns/shop/sa/api"
	observerID = "spiffe://example.org/ns/shop/sa/observer"
)

// writeSVID writes svid and the PKI's bundle as PEM files in dir, each
// replaced by a rename.
func writeSVID(t testing.TB, dir string, pki *testpki.PKI, svid *x509svid.SVID) {
	t.Helper()
	cert, key, err := svid.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	bundle, err := pki.Bundle().Marshal()
	if err != nil {
		t.Fatal(err)
	}
	for name, b := range map[string][]byte{"svid.pem": cert, "svid-key.pem": key, "bundle.pem": bundle} {
		writeFile(t, filepath.Join(dir, name), b)
	}
}

func writeFile(t testing.TB, name string, b []byte) {
	t.Helper()
	if err := os.WriteFile(name+".tmp", b, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(name+".tmp", name); err != nil {
		t.Fatal(err)
	}
}

// freeAddr is a loopback address with a port free a moment ago.
func freeAddr(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// lockedBuf is a log destination the test reads while the proxy writes.
type lockedBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuf) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// startStandalone runs `mesh-proxy standalone --config` on config until
// the test ends, and waits for its admin server's /ready.
func startStandalone(t *testing.T, config, admin string) *lockedBuf {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	var log lockedBuf
	finished := make(chan struct{})
	var runErr error
	go func() {
		runErr = meshproxy.Execute(ctx, []string{"standalone", "--config", config}, io.Discard, &log)
		close(finished)
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case <-finished:
			if runErr != nil {
				t.Errorf("standalone %s: %v", config, runErr)
			}
		case <-time.After(30 * time.Second):
			t.Errorf("standalone %s did not stop", config)
		}
	})
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		select {
		case <-finished:
			t.Fatalf("standalone %s ended: %v\n%s", config, runErr, log.String())
		default:
		}
		resp, err := http.Get("http://" + admin + "/ready")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return &log
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("standalone %s not ready: %v\n%s", config, err, log.String())
		}
	}
}

// observer is a mesh peer, written for the test, that answers every
// connection with the serial of the certificate its client presented.
// Session tickets are off, so every connection is a full handshake.
func observer(t *testing.T, pki *testpki.PKI) string {
	t.Helper()
	svid := pki.SVID(t, observerID)
	cert := tls.Certificate{PrivateKey: svid.PrivateKey}
	for _, c := range svid.Certificates {
		cert.Certificate = append(cert.Certificate, c.Raw)
	}
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{
		Certificates: []tls.Certificate{cert}, ClientAuth: tls.RequireAnyClientCert,
		NextProtos: []string{proxy.ALPN}, MinVersion: tls.VersionTLS13, SessionTicketsDisabled: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				_ = c.SetDeadline(time.Now().Add(10 * time.Second))
				tc := c.(*tls.Conn)
				if _, err := bufio.NewReader(tc).ReadString('\n'); err != nil {
					return
				}
				fmt.Fprintf(tc, "%s\n", tc.ConnectionState().PeerCertificates[0].SerialNumber.Text(16))
			}()
		}
	}()
	return ln.Addr().String()
}

// askObserver connects through the client proxy's listener at addr and
// returns the serial the observer saw.
func askObserver(addr string) (string, error) {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, "which certificate?\n"); err != nil {
		return "", err
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	return strings.TrimSpace(line), err
}

// presented is the serial of the certificate the server at addr presents
// to a new mTLS client with svid.
func presented(addr string, svid *x509svid.SVID) (string, error) {
	cert := tls.Certificate{PrivateKey: svid.PrivateKey}
	for _, c := range svid.Certificates {
		cert.Certificate = append(cert.Certificate, c.Raw)
	}
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr, &tls.Config{
		Certificates: []tls.Certificate{cert}, NextProtos: []string{proxy.ALPN},
		MinVersion: tls.VersionTLS13, InsecureSkipVerify: true, // only the serial is read
	})
	if err != nil {
		return "", err
	}
	defer c.Close()
	return c.ConnectionState().PeerCertificates[0].SerialNumber.Text(16), nil
}

func serialOf(s *x509svid.SVID) string { return s.Certificates[0].SerialNumber.Text(16) }

// TestStandalonePair: a request goes through a client-side and a
// server-side standalone proxy with SVIDs from files, under the policy
// file; both proxies' files are rotated under traffic with no failed
// request, and each peer then sees the new certificate.
func TestStandalonePair(t *testing.T) {
	pki := testpki.New(t, "example.org")
	backend := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "%s %s", r.URL.Path, r.Header.Get(proxy.PeerIdentityHeader))
	})}
	bln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go backend.Serve(bln)
	defer backend.Close()
	obs, obs2 := observer(t, pki), observer(t, pki)

	srvDir, cliDir := t.TempDir(), t.TempDir()
	writeSVID(t, srvDir, pki, pki.SVID(t, apiID))
	writeSVID(t, cliDir, pki, pki.SVID(t, webID))
	inbound, srvAdmin := freeAddr(t), freeAddr(t)
	toAPI, toObserver, toObserverWrongPeer, cliAdmin := freeAddr(t), freeAddr(t), freeAddr(t), freeAddr(t)
	writeFile(t, filepath.Join(srvDir, "policy.yaml"), []byte(`apiVersion: security.mesh.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: api, namespace: shop}
spec:
  selector: {matchLabels: {app: api}}
  action: ALLOW
  rules:
  - from: [{identities: ["`+webID+`"]}]
    to: [{paths: ["/ok/*"]}]
`))
	writeFile(t, filepath.Join(srvDir, "mesh.yaml"), []byte(fmt.Sprintf(`trustDomain: example.org
identity: {cert: svid.pem, key: svid-key.pem, bundle: bundle.pem}
workload: {namespace: shop, name: api-0, labels: {app: api}}
inbound:
  listen: %s
  forward: %s
  protocol: http
  policy: policy.yaml
  defaultPolicy: deny
admin: %s
`, inbound, bln.Addr(), srvAdmin)))
	writeFile(t, filepath.Join(cliDir, "mesh.yaml"), []byte(fmt.Sprintf(`trustDomain: example.org
identity: {cert: %[1]s/svid.pem, key: %[1]s/svid-key.pem, bundle: %[1]s/bundle.pem}
outbound:
- {listen: %[2]s, destination: %[3]s, peer: "%[4]s"}
- {listen: %[5]s, destination: %[6]s, peer: "%[7]s"}
- {listen: %[8]s, destination: "%[9]s", peer: "%[10]s"}
admin: %[11]s
`, cliDir, toAPI, inbound, apiID, toObserver, obs, observerID, toObserverWrongPeer, obs2, apiID, cliAdmin)))
	srvLog := startStandalone(t, filepath.Join(srvDir, "mesh.yaml"), srvAdmin)
	startStandalone(t, filepath.Join(cliDir, "mesh.yaml"), cliAdmin)

	keepAlive := &http.Client{Timeout: 10 * time.Second}
	fresh := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	defer keepAlive.CloseIdleConnections()
	get := func(c *http.Client, path string) (int, string, error) {
		resp, err := c.Get("http://" + toAPI + path)
		if err != nil {
			return 0, "", err
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b), err
	}

	// Through the pair, with the client's identity given to the backend,
	// and the policy file in force.
	for _, tc := range []struct {
		path   string
		status int
		body   string
	}{
		{"/ok/1", http.StatusOK, "/ok/1 " + webID},
		{"/secret", http.StatusForbidden, ""},
	} {
		status, body, err := get(keepAlive, tc.path)
		if err != nil || status != tc.status || (tc.body != "" && body != tc.body) {
			t.Fatalf("GET %s: %d %q %v; want %d %q", tc.path, status, body, err, tc.status, tc.body)
		}
	}
	// The server's admin port says which policy is in force, from the
	// file; the client, with no inbound, has none.
	for _, tc := range []struct {
		admin string
		code  int
		want  proxy.PolicyInfo
	}{
		{srvAdmin, http.StatusOK, proxy.PolicyInfo{Source: proxy.SourceFile, DefaultMode: "deny", Policies: []proxy.PolicyRef{{Namespace: "shop", Name: "api"}}}},
		{cliAdmin, http.StatusServiceUnavailable, proxy.PolicyInfo{}},
	} {
		resp, err := http.Get("http://" + tc.admin + "/policy")
		if err != nil {
			t.Fatal(err)
		}
		var got proxy.PolicyInfo
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode == http.StatusOK {
			if err := json.Unmarshal(b, &got); err != nil {
				t.Fatalf("%s/policy: %v: %s", tc.admin, err, b)
			}
			got.Since = time.Time{}
		}
		if resp.StatusCode != tc.code || !reflect.DeepEqual(got, tc.want) {
			t.Errorf("%s/policy = %d %s, want %d %+v", tc.admin, resp.StatusCode, b, tc.code, tc.want)
		}
	}
	// A destination that is not the configured peer is refused.
	if got, err := askObserver(toObserverWrongPeer); err == nil && got != "" {
		t.Fatalf("a destination presenting %s was reached where %s was required (it saw %s)", observerID, apiID, got)
	}

	// Traffic while the files rotate: a bounded loop, half on kept-alive
	// connections, half on a new connection per request.
	var sent, failed atomic.Int64
	var firstErr atomic.Value
	stop := make(chan struct{})
	trafficDone := make(chan struct{})
	go func() {
		defer close(trafficDone)
		for i := 0; i < 20000; i++ {
			select {
			case <-stop:
				return
			default:
			}
			c := keepAlive
			if i%2 == 1 {
				c = fresh
			}
			status, body, err := get(c, fmt.Sprintf("/ok/%d", i))
			sent.Add(1)
			if err != nil || status != http.StatusOK || body != fmt.Sprintf("/ok/%d %s", i, webID) {
				failed.Add(1)
				firstErr.CompareAndSwap(nil, fmt.Sprintf("request %d: %d %q %v", i, status, body, err))
			}
			time.Sleep(2 * time.Millisecond)
		}
	}()
	waitSerial := func(what, want string, got func() (string, error)) {
		t.Helper()
		var last string
		var err error
		for deadline := time.Now().Add(15 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
			if last, err = got(); err == nil && last == want {
				return
			}
		}
		t.Fatalf("%s: serial %q (%v), want %q", what, last, err, want)
	}
	webSVID := pki.SVID(t, webID)

	// A half-written certificate on the server: refused, the current SVID
	// stays, traffic goes on.
	writeFile(t, filepath.Join(srvDir, "svid.pem"), []byte("-----BEGIN CERTIFICATE-----\nMIIB"))
	for deadline := time.Now().Add(15 * time.Second); !strings.Contains(srvLog.String(), "new SVID files refused"); time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("no refusal of the truncated certificate in the log:\n%s", srvLog.String())
		}
	}
	for i := range 3 {
		api := pki.SVID(t, apiID)
		writeSVID(t, srvDir, pki, api)
		waitSerial(fmt.Sprintf("server rotation %d, seen by a new client", i), serialOf(api), func() (string, error) { return presented(inbound, webSVID) })
		web := pki.SVID(t, webID)
		writeSVID(t, cliDir, pki, web)
		waitSerial(fmt.Sprintf("client rotation %d, seen by the observer", i), serialOf(web), func() (string, error) { return askObserver(toObserver) })
	}
	close(stop)
	<-trafficDone
	if n := failed.Load(); n != 0 {
		t.Fatalf("%d of %d requests failed during rotation; first: %v", n, sent.Load(), firstErr.Load())
	}
	if n := sent.Load(); n < 20 {
		t.Fatalf("only %d requests during rotation: not traffic", n)
	}
	t.Logf("%d requests, none failed, across 3 rotations of each side", sent.Load())
}

// TestStandaloneOpaqueOutbound: an outbound declared opaque carries the
// application's bytes as they are, both ways: what the client sends,
// though it looks like HTTP, reaches the backend byte for byte (detected,
// it would have taken the HTTP path and been re-framed: "host" would
// arrive as "Host"), and the backend's greeting, written as it accepts,
// reaches the client.
func TestStandaloneOpaqueOutbound(t *testing.T) {
	pki := testpki.New(t, "example.org")
	bln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer bln.Close()
	received := make(chan string, 1)
	go func() {
		c, err := bln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(20 * time.Second))
		if _, err := io.WriteString(c, "220 ledger ready\r\n"); err != nil {
			return
		}
		var got []byte
		buf := make([]byte, 512)
		for !bytes.HasSuffix(got, []byte("\r\n\r\n")) && len(got) < 4096 {
			n, err := c.Read(buf)
			got = append(got, buf[:n]...)
			if err != nil {
				break
			}
		}
		received <- string(got)
		_, _ = c.Write([]byte("250 ok\r\n"))
	}()

	srvDir, cliDir := t.TempDir(), t.TempDir()
	writeSVID(t, srvDir, pki, pki.SVID(t, apiID))
	writeSVID(t, cliDir, pki, pki.SVID(t, webID))
	inbound, srvAdmin, out, cliAdmin := freeAddr(t), freeAddr(t), freeAddr(t), freeAddr(t)
	writeFile(t, filepath.Join(srvDir, "policy.yaml"), []byte(`apiVersion: security.mesh.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: ledger, namespace: payments}
spec:
  action: ALLOW
  rules:
  - from: [{identities: ["`+webID+`"]}]
`))
	writeFile(t, filepath.Join(srvDir, "mesh.yaml"), []byte(fmt.Sprintf(`trustDomain: example.org
identity: {cert: svid.pem, key: svid-key.pem, bundle: bundle.pem}
workload: {namespace: payments, name: ledger-0}
inbound: {listen: %s, forward: %s, protocol: opaque, policy: policy.yaml, defaultPolicy: deny}
admin: %s
`, inbound, bln.Addr(), srvAdmin)))
	writeFile(t, filepath.Join(cliDir, "mesh.yaml"), []byte(fmt.Sprintf(`trustDomain: example.org
identity: {cert: svid.pem, key: svid-key.pem, bundle: bundle.pem}
outbound:
- {listen: %s, destination: %s, peer: "%s", protocol: opaque}
admin: %s
`, out, inbound, apiID, cliAdmin)))
	startStandalone(t, filepath.Join(srvDir, "mesh.yaml"), srvAdmin)
	startStandalone(t, filepath.Join(cliDir, "mesh.yaml"), cliAdmin)

	c, err := net.Dial("tcp", out)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(20 * time.Second))
	const sent = "GET /x HTTP/1.1\r\nhost: ledger\r\nx-odd:   spaced  \r\n\r\n"
	if _, err := io.WriteString(c, sent); err != nil {
		t.Fatal(err)
	}
	r := bufio.NewReader(c)
	greeting, err := r.ReadString('\n')
	if err != nil || greeting != "220 ledger ready\r\n" {
		t.Fatalf("greeting: %q, %v", greeting, err)
	}
	select {
	case got := <-received:
		if got != sent {
			t.Fatalf("the backend received %q; want the bytes sent, %q", got, sent)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the backend received nothing")
	}
	if reply, err := r.ReadString('\n'); err != nil || reply != "250 ok\r\n" {
		t.Fatalf("reply %q, %v", reply, err)
	}
}

// TestStandaloneRefusesBadConfig: each bad configuration fails at start,
// naming the file and the field.
func TestStandaloneRefusesBadConfig(t *testing.T) {
	pki := testpki.New(t, "example.org")
	dir := t.TempDir()
	writeSVID(t, dir, pki, pki.SVID(t, apiID))
	writeFile(t, filepath.Join(dir, "pod.yaml"), []byte("apiVersion: v1\nkind: Pod\nmetadata: {name: x}\n"))
	badDir := t.TempDir()
	writeSVID(t, badDir, pki, pki.SVID(t, apiID))
	writeFile(t, filepath.Join(badDir, "svid-key.pem"), []byte("not a key"))
	id := "identity: {cert: svid.pem, key: svid-key.pem, bundle: bundle.pem}\n"
	head := "trustDomain: example.org\n" + id
	in := "inbound: {listen: \"127.0.0.1:18443\", forward: \"127.0.0.1:18080\"}\n"
	tests := []struct {
		name, yaml, want string
	}{
		{"unknown field", head + "inbound: {lisen: \"127.0.0.1:18443\", forward: \"127.0.0.1:18080\"}\n", "inbound.lisen: unknown field"},
		{"unknown field in a list", head + "outbound: [{listen: \"127.0.0.1:18001\", destination: \"127.0.0.1:19443\", peer: \"" + apiID + "\", peeer: x}]\n", "outbound[0].peeer: unknown field"},
		{"wrong type", head + "outbound: {listen: x}\n", "cannot unmarshal object into Go struct field"},
		{"not YAML", "trustDomain: [", "error converting YAML to JSON"},
		{"no trust domain", id + in, "trustDomain: required"},
		{"bad trust domain", "trustDomain: Example Org\n" + id + in, "trustDomain: trust domain characters are limited"},
		{"no cert", "trustDomain: example.org\nidentity: {key: k, bundle: b}\n" + in, "identity.cert: required"},
		{"no bundle", "trustDomain: example.org\nidentity: {cert: c, key: k}\n" + in, "identity.bundle: required"},
		{"nothing to do", head, "neither inbound nor outbound"},
		{"listen without port", head + "inbound: {listen: \"127.0.0.1\", forward: \"127.0.0.1:18080\"}\n", `inbound.listen: "127.0.0.1" is not ip:port`},
		{"listen on port 0", head + "inbound: {listen: \"127.0.0.1:0\", forward: \"127.0.0.1:18080\"}\n", `inbound.listen: "127.0.0.1:0": port "0" is not 1-65535`},
		{"listen on a name", head + "inbound: {listen: \"localhost:18443\", forward: \"127.0.0.1:18080\"}\n", `inbound.listen: "localhost:18443": "localhost" is not an IP address`},
		{"forward to a name", head + "inbound: {listen: \"127.0.0.1:18443\", forward: \"app:8080\"}\n", `inbound.forward: "app:8080" is not ip:port`},
		{"forward to own port", head + "inbound: {listen: \"0.0.0.0:18443\", forward: \"127.0.0.1:18443\"}\n", "inbound.forward: port 18443 is also inbound.listen's"},
		{"forward to admin port", head + in + "admin: \"127.0.0.1:18080\"\n", "inbound.forward: port 18080 is also admin's"},
		{"bad protocol", head + "inbound: {listen: \"127.0.0.1:18443\", forward: \"127.0.0.1:18080\", protocol: ftp}\n", `inbound.protocol: proxy: protocol "ftp" is not one of http, grpc, opaque`},
		{"bad default policy", head + "inbound: {listen: \"127.0.0.1:18443\", forward: \"127.0.0.1:18080\", defaultPolicy: open}\n", `inbound.defaultPolicy: authz: default policy "open" is not one of`},
		{"policy without namespace", head + "inbound: {listen: \"127.0.0.1:18443\", forward: \"127.0.0.1:18080\", policy: pod.yaml}\n", "workload.namespace: required with inbound.policy"},
		{"missing policy file", head + "workload: {namespace: shop}\ninbound: {listen: \"127.0.0.1:18443\", forward: \"127.0.0.1:18080\", policy: nope.yaml}\n", "inbound.policy: open " + filepath.Join(dir, "nope.yaml")},
		{"policy of another kind", head + "workload: {namespace: shop}\ninbound: {listen: \"127.0.0.1:18443\", forward: \"127.0.0.1:18080\", policy: pod.yaml}\n", "inbound.policy " + filepath.Join(dir, "pod.yaml") + ": authz: document 1 is v1 Pod"},
		{"workload without inbound", head + "workload: {namespace: shop}\noutbound: [{listen: \"127.0.0.1:18001\", destination: \"127.0.0.1:19443\", peer: \"" + apiID + "\"}]\n", "workload: only policies read it"},
		{"no peer", head + "outbound: [{listen: \"127.0.0.1:18001\", destination: \"127.0.0.1:19443\"}]\n", "outbound[0].peer: required"},
		{"peer not SPIFFE", head + "outbound: [{listen: \"127.0.0.1:18001\", destination: \"127.0.0.1:19443\", peer: \"https://api\"}]\n", "outbound[0].peer: scheme is missing or invalid"},
		{"peer of another trust domain", head + "outbound: [{listen: \"127.0.0.1:18001\", destination: \"127.0.0.1:19443\", peer: \"spiffe://other.org/api\"}]\n", "outbound[0].peer: spiffe://other.org/api is not in trust domain example.org"},
		{"destination unspecified", head + "outbound: [{listen: \"127.0.0.1:18001\", destination: \"0.0.0.0:19443\", peer: \"" + apiID + "\"}]\n", `outbound[0].destination: "0.0.0.0:19443" is not ip:port`},
		{"two peers for one destination", head + "outbound:\n- {listen: \"127.0.0.1:18001\", destination: \"127.0.0.1:19443\", peer: \"" + apiID + "\"}\n- {listen: \"127.0.0.1:18002\", destination: \"127.0.0.1:19443\", peer: \"" + webID + "\"}\n", "outbound[1].peer: 127.0.0.1:19443 is " + apiID + " for another outbound listener"},
		{"bad outbound protocol", head + "outbound: [{listen: \"127.0.0.1:18001\", destination: \"127.0.0.1:19443\", peer: \"" + apiID + "\", protocol: tcp}]\n", `outbound[0].protocol: proxy: protocol "tcp" is not one of http, grpc, opaque`},
		{"two protocols for one destination", head + "outbound:\n- {listen: \"127.0.0.1:18001\", destination: \"127.0.0.1:19443\", peer: \"" + apiID + "\", protocol: opaque}\n- {listen: \"127.0.0.1:18002\", destination: \"127.0.0.1:19443\", peer: \"" + apiID + "\"}\n", `outbound[1].protocol: 127.0.0.1:19443 is "opaque" for another outbound listener`},
		{"one address twice", head + in + "outbound: [{listen: \"127.0.0.1:18443\", destination: \"127.0.0.1:19443\", peer: \"" + apiID + "\"}]\n", "outbound[0].listen: 127.0.0.1:18443 is also inbound.listen"},
		{"wildcard overlaps", head + "inbound: {listen: \":18443\", forward: \"127.0.0.1:18080\"}\noutbound: [{listen: \"127.0.0.1:18443\", destination: \"127.0.0.1:19443\", peer: \"" + apiID + "\"}]\n", "outbound[0].listen: 127.0.0.1:18443 is also inbound.listen"},
		{"destination is itself", head + in + "outbound: [{listen: \"127.0.0.1:18001\", destination: \"127.0.0.1:18443\", peer: \"" + apiID + "\"}]\n", "outbound destination 127.0.0.1:18443 is at inbound.listen's port"},
		{"bad key file", "trustDomain: example.org\nidentity: {cert: " + badDir + "/svid.pem, key: " + badDir + "/svid-key.pem, bundle: " + badDir + "/bundle.pem}\n" + in, "identity: filesource: " + badDir + "/svid-key.pem: no PEM block"},
		{"SVID of another trust domain", "trustDomain: example.com\n" + id + in, `is not in trust domain "example.com"`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(dir, strings.ReplaceAll(tc.name, " ", "-")+".yaml")
			writeFile(t, path, []byte(tc.yaml))
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			err := meshproxy.Execute(ctx, []string{"standalone", "--config", path}, io.Discard, io.Discard)
			if err == nil {
				t.Fatal("started")
			}
			if !strings.HasPrefix(err.Error(), "standalone: "+path+": ") || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %q; want it to start with %q and contain %q", err, "standalone: "+path+": ", tc.want)
			}
		})
	}
	t.Run("missing file", func(t *testing.T) {
		if err := meshproxy.Execute(context.Background(), []string{"standalone", "--config", filepath.Join(dir, "missing.yaml")}, io.Discard, io.Discard); err == nil || !strings.Contains(err.Error(), "standalone: open "+filepath.Join(dir, "missing.yaml")) {
			t.Fatalf("error %v", err)
		}
	})
}
