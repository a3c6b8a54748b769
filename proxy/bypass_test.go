package proxy_test

import (
	"bytes"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"regexp"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/mesh-dev/mesh/authz"
	"github.com/mesh-dev/mesh/authz/audit"
	"github.com/mesh-dev/mesh/proxy"
)

// The policy of the bypass tests: everything from the mesh is allowed
// (the default), except /admin and DELETE on the HTTP port.
const noAdmin = `
apiVersion: security.mesh.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: no-admin, namespace: shop}
spec:
  action: DENY
  rules:
  - to: [{ports: [8080], paths: ["/admin*"]}]
  - to: [{ports: [8080], methods: ["DELETE"]}]
`

const forged = "spiffe://cluster.local/ns/shop/sa/admin"

// statusLines finds the responses in what a raw client read back (bodies
// need not end in a newline).
var statusLines = regexp.MustCompile(`HTTP/1\.[01] [1-5][0-9][0-9]`)

// TestBypasses tries, from a meshed client pod through both real proxies,
// every way around the policy that review found (issue 9), and asserts
// what B's application actually received: nothing denied, and no identity
// but the verified one.
func TestBypasses(t *testing.T) {
	var auditLog func() []byte
	m := newMeshFunc(t, proxy.Strict, func(m *mesh) proxy.Authorizer {
		var enf *authz.Enforcer
		enf, auditLog = auditedEnforcer(t, m, noAdmin)
		return enf
	})

	const host = "Host: backend\r\n"
	type seg struct{ Data, Pause string }
	tests := []struct {
		name string
		segs []seg
		// want is what the client reads back: a status line per request.
		want []string
		// app is what the application received, "METHOD request-URI".
		app []string
	}{
		// 1. Opaque downgrade: timing and methods the old sniffer did not know.
		{"silent for 1.5s, then GET /admin", []seg{{Pause: "1500ms", Data: "GET /admin HTTP/1.1\r\n" + host + "\r\n"}}, []string{"HTTP/1.1 403"}, nil},
		{"half a request line, silence, the rest", []seg{{Data: "GET /adm"}, {Pause: "1500ms", Data: "in HTTP/1.1\r\n" + host + "\r\n"}}, []string{"HTTP/1.1 403"}, nil},
		{"allowed request, then /admin on the same connection", []seg{{Data: "GET /ok HTTP/1.1\r\n" + host + "\r\nGET /admin HTTP/1.1\r\n" + host + "\r\n"}}, []string{"HTTP/1.1 200", "HTTP/1.1 403"}, []string{"GET /ok"}},
		{"PURGE with a forged identity, then /admin", []seg{{Data: "PURGE /ok HTTP/1.1\r\n" + host + "X-Mesh-Peer-Identity: " + forged + "\r\n\r\nGET /admin HTTP/1.1\r\n" + host + "\r\n"}}, []string{"HTTP/1.1 200", "HTTP/1.1 403"}, []string{"PURGE /ok"}},
		{"lower-case get /admin", []seg{{Data: "get /admin HTTP/1.1\r\n" + host + "\r\n"}}, []string{"HTTP/1.1 400"}, nil},
		// 2. A second request hidden in the first.
		{"bare LF hides a DELETE", []seg{{Data: "GET /healthz HTTP/1.1\r\n" + host + "X: 1\n\nDELETE /admin HTTP/1.1\r\nX-Mesh-Peer-Identity: " + forged + "\r\n\r\n"}}, []string{"HTTP/1.1 400"}, nil},
		{"CL.TE smuggling", []seg{{Data: "POST /ok HTTP/1.1\r\n" + host + "Content-Length: 35\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /admin HTTP/1.1\r\n" + host + "\r\n"}}, []string{"HTTP/1.1 400"}, nil},
		{"obs-fold", []seg{{Data: "GET /ok HTTP/1.1\r\n" + host + "X-Mesh-Peer-Identity: a\r\n " + forged + "\r\n\r\n"}}, []string{"HTTP/1.1 400"}, nil},
		// 3. Paths and methods, normalised before matching and forwarding.
		{"//admin", []seg{{Data: "GET //admin HTTP/1.1\r\n" + host + "\r\n"}}, []string{"HTTP/1.1 403"}, nil},
		{"/./admin", []seg{{Data: "GET /./admin HTTP/1.1\r\n" + host + "\r\n"}}, []string{"HTTP/1.1 403"}, nil},
		{"/x/../admin", []seg{{Data: "GET /x/../admin HTTP/1.1\r\n" + host + "\r\n"}}, []string{"HTTP/1.1 403"}, nil},
		{"/x/%2e%2e/admin", []seg{{Data: "GET /x/%2e%2e/admin HTTP/1.1\r\n" + host + "\r\n"}}, []string{"HTTP/1.1 403"}, nil},
		{"/%61dmin", []seg{{Data: "GET /%61dmin HTTP/1.1\r\n" + host + "\r\n"}}, []string{"HTTP/1.1 403"}, nil},
		{"/x/..%2Fadmin", []seg{{Data: "GET /x/..%2Fadmin HTTP/1.1\r\n" + host + "\r\n"}}, []string{"HTTP/1.1 400"}, nil},
		{"absolute-form", []seg{{Data: "GET http://backend//admin HTTP/1.1\r\n" + host + "\r\n"}}, []string{"HTTP/1.1 403"}, nil},
		{"the app gets the normalised path", []seg{{Data: "GET /x/./../ok//y?q=/../admin HTTP/1.1\r\n" + host + "\r\n"}}, []string{"HTTP/1.1 200"}, []string{"GET /ok/y?q=/../admin"}},
		{"DELETE", []seg{{Data: "DELETE /ok HTTP/1.1\r\n" + host + "\r\n"}}, []string{"HTTP/1.1 403"}, nil},
		{"delete", []seg{{Data: "delete /ok HTTP/1.1\r\n" + host + "\r\n"}}, []string{"HTTP/1.1 400"}, nil},
		{"Delete", []seg{{Data: "Delete /ok HTTP/1.1\r\n" + host + "\r\n"}}, []string{"HTTP/1.1 400"}, nil},
		// 4. Header variants of the identity header.
		{"X_Mesh_Peer_Identity", []seg{{Data: "GET /ok HTTP/1.1\r\n" + host + "X_Mesh_Peer_Identity: " + forged + "\r\n\r\n"}}, []string{"HTTP/1.1 200"}, []string{"GET /ok"}},
		{"X-MESH-PEER_IDENTITY", []seg{{Data: "GET /ok HTTP/1.1\r\n" + host + "X-MESH-PEER_IDENTITY: " + forged + "\r\n\r\n"}}, []string{"HTTP/1.1 200"}, []string{"GET /ok"}},
		{"another header with an underscore", []seg{{Data: "GET /ok HTTP/1.1\r\n" + host + "X_Remote_User: admin\r\n\r\n"}}, []string{"HTTP/1.1 400"}, nil},
		{"x-mesh-peer-identity", []seg{{Data: "GET /ok HTTP/1.1\r\n" + host + "x-mesh-peer-identity: " + forged + "\r\n\r\n"}}, []string{"HTTP/1.1 200"}, []string{"GET /ok"}},
		// Upgrades are decided before they happen; h2c is refused so that
		// every later request is still seen.
		{"WebSocket upgrade to /admin", []seg{{Data: "GET /admin HTTP/1.1\r\n" + host + "Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"}}, []string{"HTTP/1.1 403"}, nil},
		{"h2c upgrade hidden beside another", []seg{{Data: "GET /ok HTTP/1.1\r\n" + host + "Connection: Upgrade\r\nUpgrade: websocket, h2c\r\n\r\n"}}, []string{"HTTP/1.1 400"}, nil},
		{"h2c upgrade answered in HTTP/1.1", []seg{{Data: "GET /ok HTTP/1.1\r\n" + host + "Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n"}}, []string{"HTTP/1.1 200"}, []string{"GET /ok"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			m.resetReceived(t)
			segs, _ := json.Marshal(tc.segs)
			out, err := m.app(t, "raw", fmt.Sprintf("TARGET=%s:%d", ipB, httpPort), "SEGMENTS="+string(segs))
			if err != nil {
				t.Fatal(err)
			}
			got := statusLines.FindAllString(out, -1)
			if strings.Join(got, ",") != strings.Join(tc.want, ",") {
				t.Errorf("client got %q; want %q\n%s", got, tc.want, out)
			}
			var app []string
			for _, r := range m.received(t) {
				app = append(app, r.Method+" "+r.RequestURI)
				if ids := r.Header.Values("X-Mesh-Peer-Identity"); len(ids) != 1 || ids[0] != clientID.String() {
					t.Errorf("the app saw identity %q for %s %s; want only %s", ids, r.Method, r.RequestURI, clientID)
				}
				for name := range r.Header {
					if n := strings.ToLower(strings.ReplaceAll(name, "_", "-")); strings.HasPrefix(n, "x-mesh-") && name != "X-Mesh-Peer-Identity" {
						t.Errorf("a variant of mesh's header reached the app: %s", name)
					}
					if strings.EqualFold(name, "Upgrade") || strings.EqualFold(name, "Http2-Settings") {
						t.Errorf("an h2c upgrade header reached the app: %s", name)
					}
				}
				// Delivered to the pod IP, not to loopback: the caller is
				// not "localhost" to the app.
				if host, _, _ := net.SplitHostPort(r.Remote); host != ipB {
					t.Errorf("the app saw the request come from %s, want the pod's own address %s", r.Remote, ipB)
				}
			}
			if strings.Join(app, ",") != strings.Join(tc.app, ",") {
				t.Errorf("the app received %q; want %q", app, tc.app)
			}
		})
	}

	t.Run("plaintext probe from the node address with a hidden request", func(t *testing.T) {
		m.resetReceived(t)
		c := m.dialB(t)
		fmt.Fprint(c, "GET /healthz HTTP/1.1\r\n"+host+"X: 1\n\nDELETE /admin HTTP/1.1\r\nX-Mesh-Peer-Identity: "+forged+"\r\n\r\n")
		buf := make([]byte, 1024)
		n, _ := c.Read(buf)
		if n > 0 {
			t.Fatalf("plaintext in strict mode got an answer: %q", buf[:n])
		}
		if got := m.received(t); len(got) != 0 {
			t.Fatalf("the app received %+v", got)
		}
	})

	t.Run("slow HTTP/2 client to a server that speaks first", func(t *testing.T) {
		// gRPC servers send their SETTINGS before the client's preface: a
		// client silent for longer than the wait must still be read as
		// HTTP/2, request by request, not passed as opaque TCP.
		before := metric(t, m.b.reg, "mesh_proxy_http_requests_total", map[string]string{"direction": "inbound", "method": "POST"})
		c, err := m.a.ns.Dial(t.Context(), "tcp", fmt.Sprintf("%s:%d", ipB, grpcPort))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		tc := tls.Client(c, meshTLS(t, tlsCert(t, m.pki, clientID), proxy.ALPN))
		_ = tc.SetDeadline(time.Now().Add(10 * time.Second))
		if err := tc.Handshake(); err != nil {
			t.Fatal(err)
		}
		time.Sleep(1500 * time.Millisecond)
		var hb bytes.Buffer
		enc := hpack.NewEncoder(&hb)
		for _, f := range [][2]string{{":method", "POST"}, {":scheme", "http"}, {":path", "/grpc.testing.TestService/EmptyCall"}, {":authority", "backend"},
			{"content-type", "application/grpc"}, {"te", "trailers"}, {"x-mesh-peer-identity", forged}} {
			_ = enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
		}
		if _, err := tc.Write([]byte(http2.ClientPreface)); err != nil {
			t.Fatal(err)
		}
		fr := http2.NewFramer(tc, tc)
		_ = fr.WriteSettings()
		_ = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: hb.Bytes(), EndHeaders: true})
		_ = fr.WriteData(1, true, []byte{0, 0, 0, 0, 0})
		var status string
		for status == "" {
			f, err := fr.ReadFrame()
			if err != nil {
				t.Fatalf("reading the response: %v", err)
			}
			if h, ok := f.(*http2.HeadersFrame); ok {
				dec := hpack.NewDecoder(4096, func(f hpack.HeaderField) {
					if f.Name == "grpc-status" {
						status = f.Value
					}
				})
				_, _ = dec.Write(h.HeaderBlockFragment())
			}
		}
		if after := metric(t, m.b.reg, "mesh_proxy_http_requests_total", map[string]string{"direction": "inbound", "method": "POST"}); after != before+1 {
			t.Fatalf("B's proxy counted %v HTTP POSTs, want %v: the slow HTTP/2 client went opaque", after, before+1)
		}
	})

	t.Run("loopback-only listener stays private", func(t *testing.T) {
		m.resetReceived(t)
		out, err := m.app(t, "http", fmt.Sprintf("TARGET=http://%s:%d/", ipB, loopbackPort))
		if err == nil && strings.Contains(out, "secret") {
			t.Fatalf("a listener bound to 127.0.0.1 answered through the mesh: %q", out)
		}
		if got := m.received(t); len(got) != 0 {
			t.Fatalf("the loopback-only listener got %+v", got)
		}
	})

	t.Run("connections to the proxy's own ports do not loop", func(t *testing.T) {
		before := metric(t, m.b.reg, "mesh_proxy_connections_refused_total", map[string]string{"reason": "loop"})
		// A's pooled connections to B stay open; the refused ones must not.
		openBefore := metric(t, m.b.reg, "mesh_proxy_connections_open", map[string]string{"direction": "inbound"})
		for _, port := range []int{proxy.DefaultInboundPort, proxy.DefaultOutboundPort} {
			c, err := m.a.ns.Dial(t.Context(), "tcp", fmt.Sprintf("%s:%d", ipB, port))
			if err != nil {
				continue // nothing listens there for other pods: fine
			}
			tc := tls.Client(c, meshTLS(t, tlsCert(t, m.pki, clientID), proxy.ALPN))
			_ = tc.SetDeadline(time.Now().Add(5 * time.Second))
			fmt.Fprint(tc, "GET / HTTP/1.1\r\n"+host+"\r\n")
			b := make([]byte, 512)
			n, _ := tc.Read(b)
			c.Close()
			if n > 0 {
				t.Fatalf("port %d answered %q", port, b[:n])
			}
		}
		if after := metric(t, m.b.reg, "mesh_proxy_connections_refused_total", map[string]string{"reason": "loop"}); after != before+1 {
			t.Fatalf("loop refusals went from %v to %v, want one more (the inbound port)", before, after)
		}
		waitFor(t, 5*time.Second, "B's open connections back to what they were", func() error {
			if n := metric(t, m.b.reg, "mesh_proxy_connections_open", map[string]string{"direction": "inbound"}); n != openBefore {
				return fmt.Errorf("%v open, %v before", n, openBefore)
			}
			return nil
		})
	})

	t.Run("admin shutdown only from the pod itself", func(t *testing.T) {
		admin := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DialContext: m.a.ns.Dial}}
		resp, err := admin.Post(fmt.Sprintf("http://%s:15020/shutdown", ipB), "text/plain", nil)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusForbidden {
			t.Fatalf("POST /shutdown from another pod: %s, want 403", resp.Status)
		}
		resp, err = admin.Get(fmt.Sprintf("http://%s:15020/ready", ipB))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("after the refused shutdown /ready = %s", resp.Status)
		}
	})

	raw := auditLog()
	res, err := audit.Verify(bytes.NewReader(raw), audit.VerifyOptions{Bundle: m.pki.Bundle(), Strict: true})
	if err != nil || len(res.Streams) != 1 || res.Streams[0].Signer != serverID {
		t.Fatalf("the proxy's audit log: %+v, %v; want one stream signed by %s", res, err, serverID)
	}
	// Refusals are audited, not only decisions; the paths recorded are the
	// normalised ones, which were enforced.
	for _, want := range []string{
		`"event":"refused"`, `"reason":"plaintext_in_strict_mode"`, `"reason":"bad_request"`, `"reason":"loop"`,
		`"http.path":"/admin"`,
	} {
		if !bytes.Contains(raw, []byte(want)) {
			t.Errorf("no audit record with %s in:\n%s", want, raw)
		}
	}
	if bytes.Contains(raw, []byte(`"http.path":"//admin"`)) || bytes.Contains(raw, []byte(`%2e`)) {
		t.Errorf("an un-normalised path was recorded:\n%s", raw)
	}
}
