package probe

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
)

// UserAgent is sent on HTTP and gRPC probes unless httpHeaders set one:
// what the kubelet of the Kubernetes minor we build against (k8s.io/api
// v0.37) sends, since apps match "kube-probe/" to skip logging.
const UserAgent = "kube-probe/1.37"

// Bounds of an HTTP probe, the kubelet's where it has one.
const (
	maxRedirects     = 10       // requests in a chain, the kubelet's
	maxBody          = 10 << 10 // read and discarded, as the kubelet does
	maxResponseHeads = 64 << 10
)

// newHTTPClient is the kubelet's probe client: no keep-alive, no proxy from
// the environment, no compression, certificates not verified. With h2c it
// speaks cleartext HTTP/2 with prior knowledge and nothing else, as the
// kubelet does for protocol HTTP2.
func newHTTPClient(dial func(ctx context.Context, network, addr string) (net.Conn, error), h2c bool) *http.Client {
	t := &http.Transport{
		DialContext: dial,
		// The kubelet does not verify the app's certificate either: the
		// probe checks liveness, and the app's certificate names whatever
		// its clients expect, not the pod IP.
		TLSClientConfig:        &tls.Config{InsecureSkipVerify: true}, //nolint:gosec // see above
		DisableKeepAlives:      true,
		DisableCompression:     true,
		Proxy:                  nil,
		MaxResponseHeaderBytes: maxResponseHeads,
	}
	if h2c {
		t.Protocols = new(http.Protocols)
		t.Protocols.SetUnencryptedHTTP2(true)
	}
	return &http.Client{Transport: t, CheckRedirect: checkRedirect}
}

// checkRedirect follows a redirect only to the same address and port as the
// probe itself (scheme and path may change), maxRedirects requests at most. The
// kubelet follows any same-host redirect; following one to another port of
// the pod could send the proxy to its own admin port and into its own
// probes, so that is not followed. A redirect not followed ends the probe
// with the 3xx, which counts as success as for the kubelet ("Probe
// terminated redirects").
func checkRedirect(req *http.Request, via []*http.Request) error {
	if req.URL.Host != via[0].URL.Host {
		return http.ErrUseLastResponse
	}
	if len(via) >= maxRedirects {
		// No prefix: the client wraps it in the probe's error.
		return fmt.Errorf("stopped after %d redirects", maxRedirects)
	}
	return nil
}

// httpCheck compiles an httpGet probe (already validated).
func (h *Handler) httpCheck(g *HTTPGetAction) (func(context.Context) error, error) {
	u, err := url.Parse(g.Path)
	if err != nil {
		return nil, fmt.Errorf("httpGet.path: %w", err)
	}
	u.Scheme = strings.ToLower(g.Scheme)
	if u.Scheme == "" {
		u.Scheme = "http"
	}
	u.Host = h.addr(g.Port.IntVal)
	target := u.String()

	header := make(http.Header, len(g.HTTPHeaders)+2)
	for _, hd := range g.HTTPHeaders {
		header.Add(hd.Name, hd.Value)
	}
	// As the kubelet: defaults unless configured, an empty Accept removes it.
	if _, ok := header["User-Agent"]; !ok {
		header.Set("User-Agent", UserAgent)
	}
	if _, ok := header["Accept"]; !ok {
		header.Set("Accept", "*/*")
	} else if header.Get("Accept") == "" {
		header.Del("Accept")
	}
	host := header.Get("Host")
	client := h.client
	if g.Protocol != nil && *g.Protocol == HTTPProtocolHTTP2 {
		client = h.h2cClient
	}

	return func(ctx context.Context) error {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, target, nil)
		if err != nil {
			return fmt.Errorf("probe: http: %w", err)
		}
		req.Header = header.Clone()
		req.Host = host
		resp, err := client.Do(req)
		if err != nil {
			return fmt.Errorf("probe: http: %w", err)
		}
		defer resp.Body.Close()
		// Read a bounded part so a slow or endless body cannot hold the
		// probe; the rest is dropped with the connection (no keep-alive).
		if _, err := io.Copy(io.Discard, io.LimitReader(resp.Body, maxBody)); err != nil {
			return fmt.Errorf("probe: http: reading the response: %w", err)
		}
		if resp.StatusCode < 200 || resp.StatusCode >= 400 {
			return fmt.Errorf("probe: http: status %d", resp.StatusCode)
		}
		return nil
	}, nil
}
