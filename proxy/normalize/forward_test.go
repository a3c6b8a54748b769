package normalize_test

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mesh-dev/mesh/proxy/normalize"
)

// seen is what the application received.
type seen struct {
	method, requestURI string
	identities         []string // values of every header IsMeshHeader matches
}

// app is a real net/http application that records every request it gets.
type app struct {
	mu   sync.Mutex
	reqs []seen
}

func (a *app) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s := seen{method: r.Method, requestURI: r.RequestURI}
	for k, v := range r.Header {
		if normalize.IsMeshHeader(k) {
			s.identities = append(s.identities, k+": "+strings.Join(v, ","))
		}
	}
	a.mu.Lock()
	a.reqs = append(a.reqs, s)
	a.mu.Unlock()
	io.WriteString(w, "app\n")
}

func (a *app) take() []seen {
	a.mu.Lock()
	defer a.mu.Unlock()
	r := a.reqs
	a.reqs = nil
	return r
}

// sidecar wires the package the way the inbound proxy should: check the
// method, normalise the target, authorise the normalised path, sanitise
// headers, set the verified identity, forward the normalised path.
// Authorization here is one rule, "DENY /admin*".
func sidecar(appURL *url.URL, mode normalize.Mode, action normalize.UnderscoreAction) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if err := normalize.Method(r.Method); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		path, query, err := normalize.Path(r.RequestURI, mode)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		if strings.HasPrefix(path, "/admin") {
			http.Error(w, "denied", http.StatusForbidden)
			return
		}
		if _, err := normalize.Headers(r.Header, action); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		decoded, err := url.PathUnescape(path)
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		rp := &httputil.ReverseProxy{
			Rewrite: func(pr *httputil.ProxyRequest) {
				pr.SetURL(appURL)
				// Exactly what was authorised: RawPath carries the escaped
				// form, Path its decoding, so net/http sends RawPath as is.
				pr.Out.URL.Path, pr.Out.URL.RawPath, pr.Out.URL.RawQuery = decoded, path, query
				pr.Out.Header.Set("X-Mesh-Peer-Identity", "spiffe://mesh.test/ns/a/sa/caller")
			},
		}
		rp.ServeHTTP(w, r)
	})
}

// rawRequest sends one request as bytes, so that no client library cleans
// the target first, and returns the status and body.
func rawRequest(t *testing.T, addr, req string) (int, string) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, req); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("reading the response to %q: %v", req, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, string(body)
}

// TestForward runs the bypasses through a real net/http server and
// ReverseProxy to a real application, and asserts what the application
// received: nothing for a denied or refused request, else exactly the
// normalised path, and never a client-sent identity.
func TestForward(t *testing.T) {
	a := &app{}
	appSrv := httptest.NewServer(a)
	defer appSrv.Close()
	appURL, err := url.Parse(appSrv.URL)
	if err != nil {
		t.Fatal(err)
	}
	const verified = "X-Mesh-Peer-Identity: spiffe://mesh.test/ns/a/sa/caller"
	forged := "X-Mesh-Peer-Identity: spiffe://evil\r\nX_Mesh_Peer_Identity: spiffe://evil\r\nx-mesh_peer-identity: spiffe://evil\r\n"
	tests := []struct {
		mode   normalize.Mode
		action normalize.UnderscoreAction
		method string
		target string
		extra  string // header lines
		status int
		uri    string // what the app receives; "" for nothing
		body   string // a substring of the response body
	}{
		{normalize.MergeSlashes, normalize.Reject, "GET", "/public", "", 200, "/public", "app"},
		{normalize.MergeSlashes, normalize.Reject, "GET", "/admin", "", 403, "", "denied"},
		{normalize.MergeSlashes, normalize.Reject, "GET", "//admin", "", 403, "", "denied"},
		{normalize.MergeSlashes, normalize.Reject, "GET", "/./admin", "", 403, "", "denied"},
		{normalize.MergeSlashes, normalize.Reject, "GET", "/x/../admin", "", 403, "", "denied"},
		{normalize.MergeSlashes, normalize.Reject, "GET", "/x/%2e%2e/admin", "", 403, "", "denied"},
		{normalize.MergeSlashes, normalize.Reject, "GET", "/x/%2E%2E/admin", "", 403, "", "denied"},
		{normalize.MergeSlashes, normalize.Reject, "GET", "/%2e%2e/admin", "", 403, "", "denied"},
		{normalize.MergeSlashes, normalize.Reject, "GET", "/%61dmin", "", 403, "", "denied"},
		{normalize.MergeSlashes, normalize.Reject, "GET", "/x/..\\admin", "", 403, "", "denied"},
		{normalize.MergeSlashes, normalize.Reject, "GET", "http://h//admin", "", 403, "", "denied"},
		{normalize.MergeSlashes, normalize.Reject, "GET", "/a/..%2Fadmin", "", 400, "", "encoded '/'"},
		{normalize.MergeSlashes, normalize.Reject, "GET", "/public%2F..%2Fadmin", "", 400, "", "encoded '/'"},
		{normalize.MergeSlashes, normalize.Reject, "GET", "/x/..;/admin", "", 400, "", "dot segment with parameters"},
		{normalize.MergeSlashes, normalize.Reject, "GET", "/admin%zz", "", 400, "", "Bad Request"}, // net/http refuses it first
		{normalize.MergeSlashes, normalize.Reject, "GET", "/public#/../admin", "", 400, "", "fragment"},
		{normalize.DecodeAndMergeSlashes, normalize.Reject, "GET", "/a/..%2Fadmin", "", 403, "", "denied"},
		{normalize.DecodeAndMergeSlashes, normalize.Reject, "GET", "/pub%2flic", "", 200, "/pub/lic", "app"},
		// The app gets the normalised form, not the one sent.
		{normalize.MergeSlashes, normalize.Reject, "GET", "//public/./a/../b%3a%7e?x=/../admin", "", 200, "/public/b%3A~?x=/../admin", "app"},
		{normalize.MergeSlashes, normalize.Reject, "GET", "/a{b}", "", 200, "/a%7Bb%7D", "app"},
		{normalize.MergeSlashes, normalize.Reject, "GET", "/%2561dmin", "", 200, "/%2561dmin", "app"},
		{normalize.Base, normalize.Reject, "GET", "//public//x", "", 200, "//public//x", "app"},
		{normalize.None, normalize.Reject, "GET", "/x/../admin", "", 200, "/x/../admin", "app"}, // what NONE means
		// Methods.
		{normalize.MergeSlashes, normalize.Reject, "delete", "/public", "", 400, "", `method "delete" is not upper-case DELETE`},
		{normalize.MergeSlashes, normalize.Reject, "Get", "/public", "", 400, "", `method "Get" is not upper-case GET`},
		{normalize.MergeSlashes, normalize.Reject, "PURGE", "/public", "", 200, "/public", "app"},
		// Headers: forged identities never arrive; the verified one does.
		{normalize.MergeSlashes, normalize.Drop, "GET", "/public", forged, 200, "/public", "app"},
		{normalize.MergeSlashes, normalize.Reject, "GET", "/public", forged, 200, "/public", "app"},
		{normalize.MergeSlashes, normalize.Reject, "GET", "/public", "X_User: admin\r\n", 400, "", `header "X_user" has '_'`},
		{normalize.MergeSlashes, normalize.Drop, "GET", "/public", "X_User: admin\r\n", 200, "/public", "app"},
	}
	for _, tt := range tests {
		name := fmt.Sprintf("%s/%s/%s %s", tt.mode, tt.action, tt.method, tt.target)
		t.Run(name, func(t *testing.T) {
			front := httptest.NewServer(sidecar(appURL, tt.mode, tt.action))
			defer front.Close()
			req := tt.method + " " + tt.target + " HTTP/1.1\r\nHost: app\r\nConnection: close\r\n" + tt.extra + "\r\n"
			status, body := rawRequest(t, front.Listener.Addr().String(), req)
			if status != tt.status || !strings.Contains(body, tt.body) {
				t.Errorf("got %d %q; want %d and a body with %q", status, body, tt.status, tt.body)
			}
			got := a.take()
			if tt.uri == "" {
				if len(got) != 0 {
					t.Fatalf("the app received %+v; want nothing", got)
				}
				return
			}
			if len(got) != 1 {
				t.Fatalf("the app received %d requests (%+v); want 1", len(got), got)
			}
			if got[0].requestURI != tt.uri || got[0].method != tt.method {
				t.Errorf("the app received %s %q; want %s %q", got[0].method, got[0].requestURI, tt.method, tt.uri)
			}
			if len(got[0].identities) != 1 || got[0].identities[0] != verified {
				t.Errorf("the app received identity headers %q; want only %q", got[0].identities, verified)
			}
		})
	}
}
