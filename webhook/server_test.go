package webhook_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	jsonpatch "gopkg.in/evanphx/json-patch.v4"
	admissionv1 "k8s.io/api/admission/v1"
	admissionregv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/mesh-dev/mesh/ca"
	"github.com/mesh-dev/mesh/controlplane/inventory"
	"github.com/mesh-dev/mesh/inject"
	"github.com/mesh-dev/mesh/webhook"
)

const svcName = "mesh-webhook.mesh-system.svc"

var (
	td    = spiffeid.RequireTrustDomainFromString("cluster.local")
	quiet = slog.New(slog.DiscardHandler)
)

// clock is a settable clock.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.now }
func (c *clock) Add(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

type env struct {
	ca    *ca.CA
	srv   *webhook.Server
	reg   *prometheus.Registry
	addr  string
	clock *clock
}

// start runs a webhook server on loopback with a real CA.
func start(t *testing.T, kube *fake.Clientset, patchEvery time.Duration) *env {
	t.Helper()
	authority, err := ca.New(t.Context(), ca.Config{TrustDomain: td, Store: &ca.MemoryStore{}, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	in, err := inject.New(inject.Config{}, inject.Mesh{TrustDomain: td, ControllerID: spiffeid.RequireFromString("spiffe://cluster.local/ns/mesh-system/sa/mesh-controller"), Namespace: "mesh-system", Version: "0.1.0"})
	if err != nil {
		t.Fatal(err)
	}
	e := &env{ca: authority, reg: prometheus.NewRegistry(), clock: &clock{now: time.Now()}}
	cfg := webhook.Config{
		CA: authority, DNSNames: []string{svcName, svcName + ".cluster.local"}, IPs: []net.IP{net.IPv4(127, 0, 0, 1)},
		Injector: in, Logger: quiet, Registerer: e.reg, Now: e.clock.Now, PatchInterval: patchEvery,
		NamespaceLabels: func(_ context.Context, ns string) (map[string]string, error) {
			switch ns {
			case "shop":
				return map[string]string{inject.InjectKey: inject.Enabled}, nil
			case "broken":
				return nil, errors.New("informer not synced and the API is down")
			}
			return map[string]string{}, nil
		},
		MutatingWebhook: "mesh-injector", ValidatingWebhook: "mesh-policy-validator",
	}
	if kube != nil {
		cfg.Kube = kube
	}
	e.srv, err = webhook.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	e.addr = lis.Addr().String()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- e.srv.Run(ctx, lis) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	return e
}

// client trusts only the CA's bundle, as the API server does with caBundle.
func (e *env) client(serverName string, maxVersion uint16) *http.Client {
	pool := x509.NewCertPool()
	for _, r := range e.ca.Bundle() {
		pool.AddCert(r)
	}
	return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: pool, ServerName: serverName, MaxVersion: maxVersion},
	}}
}

func review(kind, op, ns string, obj any) []byte {
	raw, _ := json.Marshal(obj)
	b, _ := json.Marshal(admissionv1.AdmissionReview{
		TypeMeta: metav1.TypeMeta{APIVersion: "admission.k8s.io/v1", Kind: "AdmissionReview"},
		Request: &admissionv1.AdmissionRequest{
			UID: types.UID("uid-" + kind + op), Kind: metav1.GroupVersionKind{Version: "v1", Kind: kind}, Operation: admissionv1.Operation(op),
			Namespace: ns, Object: runtime.RawExtension{Raw: raw},
		},
	})
	return b
}

func pod(ann map[string]string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{GenerateName: "web-", Annotations: ann},
		Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "web", Image: "web",
			ReadinessProbe: &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/r", Port: intstr.FromInt32(8080)}}}}}},
	}
}

func policy(spec string) map[string]any {
	var s map[string]any
	_ = json.Unmarshal([]byte(spec), &s)
	return map[string]any{"apiVersion": "security.mesh.dev/v1alpha1", "kind": "AuthorizationPolicy", "metadata": map[string]any{"name": "p", "namespace": "shop"}, "spec": s}
}

// TestServe: the webhooks over real TLS with AdmissionReview bodies.
func TestServe(t *testing.T) {
	e := start(t, nil, time.Hour)
	c := e.client(svcName, 0)
	url := "https://" + e.addr
	tests := []struct {
		name, path, method string
		body               []byte
		status             int
		allowed            bool
		patched            bool
		message            string
	}{
		{name: "labelled namespace", path: "/inject", body: review("Pod", "CREATE", "shop", pod(nil)), status: 200, allowed: true, patched: true},
		{name: "unlabelled namespace", path: "/inject", body: review("Pod", "CREATE", "other", pod(nil)), status: 200, allowed: true},
		{name: "opted in", path: "/inject", body: review("Pod", "CREATE", "other", pod(map[string]string{"mesh.dev/inject": "enabled"})), status: 200, allowed: true, patched: true},
		{name: "opted out", path: "/inject", body: review("Pod", "CREATE", "shop", pod(map[string]string{"mesh.dev/inject": "disabled"})), status: 200, allowed: true},
		{name: "bad annotation", path: "/inject", body: review("Pod", "CREATE", "shop", pod(map[string]string{"mesh.dev/skip-inbound-ports": "http"})), status: 200,
			message: `inject: mesh.dev/skip-inbound-ports: "http" is not a port`},
		{name: "not a pod", path: "/inject", body: review("Service", "CREATE", "shop", map[string]any{"metadata": map[string]any{"name": "s"}}), status: 200, allowed: true},
		{name: "pod update", path: "/inject", body: review("Pod", "UPDATE", "shop", pod(nil)), status: 200, allowed: true},
		{name: "namespace unreadable", path: "/inject", body: review("Pod", "CREATE", "broken", pod(nil)), status: 500},
		{name: "pod not JSON", path: "/inject", body: review("Pod", "CREATE", "shop", json.RawMessage(`"a string"`)), status: 500},
		{name: "GET", path: "/inject", method: "GET", status: 405},
		{name: "not a review", path: "/inject", body: []byte(`{"kind":"nope"}`), status: 400},
		{name: "garbage", path: "/inject", body: []byte("\x00\x01"), status: 400},
		{name: "too large", path: "/inject", body: bytes.Repeat([]byte(" "), 5<<20), status: 413},
		{name: "valid policy", path: "/validate-policy", body: review("AuthorizationPolicy", "CREATE", "shop", policy(`{"action":"ALLOW","rules":[{"from":[{"namespaces":["shop"]}]}]}`)), status: 200, allowed: true},
		{name: "invalid policy", path: "/validate-policy", body: review("AuthorizationPolicy", "CREATE", "shop", policy(`{"action":"ALLOW","rules":[{"to":[{"methods":["FETCH"]}]}]}`)), status: 200,
			message: `spec.rules[0].to[0].methods[0]: Unsupported value: "FETCH"`},
		{name: "unknown path", path: "/mutate", body: review("Pod", "CREATE", "shop", pod(nil)), status: 404},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			method := tc.method
			if method == "" {
				method = "POST"
			}
			req, _ := http.NewRequest(method, url+tc.path, bytes.NewReader(tc.body))
			req.Header.Set("Content-Type", "application/json")
			resp, err := c.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			body, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != tc.status {
				t.Fatalf("status %d, want %d: %s", resp.StatusCode, tc.status, body)
			}
			if tc.status != 200 {
				return
			}
			var rv admissionv1.AdmissionReview
			if err := json.Unmarshal(body, &rv); err != nil || rv.Response == nil {
				t.Fatalf("not an AdmissionReview: %v %s", err, body)
			}
			r := rv.Response
			var sent admissionv1.AdmissionReview
			_ = json.Unmarshal(tc.body, &sent)
			if r.UID != sent.Request.UID || rv.Request != nil {
				t.Errorf("UID %q, want %q; request echoed: %v", r.UID, sent.Request.UID, rv.Request != nil)
			}
			if tc.message != "" {
				if r.Allowed || r.Result == nil || !strings.Contains(r.Result.Message, tc.message) {
					t.Fatalf("response %+v, want a denial containing %q", r, tc.message)
				}
				return
			}
			if r.Allowed != tc.allowed || (r.Patch != nil) != tc.patched {
				t.Fatalf("allowed %v patch %s", r.Allowed, r.Patch)
			}
			if tc.patched {
				if r.PatchType == nil || *r.PatchType != admissionv1.PatchTypeJSONPatch {
					t.Errorf("patch type %v", r.PatchType)
				}
				p, err := jsonpatch.DecodePatch(r.Patch)
				if err != nil {
					t.Fatal(err)
				}
				out, err := p.Apply(sent.Request.Object.Raw)
				if err != nil {
					t.Fatalf("patch does not apply: %v", err)
				}
				var got corev1.Pod
				if err := json.Unmarshal(out, &got); err != nil || !inventory.Meshed(&got) || got.Spec.Containers[0].ReadinessProbe.HTTPGet.Path != "/app-health/web/readyz" {
					t.Errorf("patched pod not injected: %v %s", err, out)
				}
			}
		})
	}

	for _, m := range []struct {
		webhook, result string
		want            float64
	}{
		{"inject", "injected", 2}, {"inject", "skipped", 2}, {"inject", "denied", 1}, {"inject", "ignored", 2},
		{"inject", "error", 2}, {"inject", "bad_request", 4}, {"validate-policy", "allowed", 1}, {"validate-policy", "denied", 1},
	} {
		got := testutil.ToFloat64(mustCounter(t, e.reg, m.webhook, m.result))
		if got != m.want {
			t.Errorf("%s{webhook=%s,result=%s} = %v, want %v", webhook.RequestsMetric, m.webhook, m.result, got, m.want)
		}
	}

	// TLS 1.3 only; a name not in the certificate is refused.
	if _, err := e.client(svcName, tls.VersionTLS12).Get(url + "/inject"); err == nil || !strings.Contains(err.Error(), "protocol version") {
		t.Errorf("a TLS 1.2 client: %v, want a protocol version error", err)
	}
	if _, err := e.client("evil.mesh-system.svc", 0).Get(url + "/inject"); err == nil || !strings.Contains(err.Error(), "certificate is valid for") {
		t.Errorf("a client asking for another name: %v", err)
	}
}

func mustCounter(t *testing.T, reg *prometheus.Registry, wh, result string) prometheus.Collector {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != webhook.RequestsMetric {
			continue
		}
		for _, m := range mf.Metric {
			labels := map[string]string{}
			for _, l := range m.Label {
				labels[l.GetName()] = l.GetValue()
			}
			if labels["webhook"] == wh && labels["result"] == result {
				return prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "x"}, func() float64 { return m.Counter.GetValue() })
			}
		}
	}
	return prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "x"}, func() float64 { return 0 })
}

// served is the serial of the certificate a handshake gets now.
func (e *env) served(t *testing.T) string {
	t.Helper()
	pool := x509.NewCertPool()
	for _, r := range e.ca.Bundle() {
		pool.AddCert(r)
	}
	conn, err := tls.Dial("tcp", e.addr, &tls.Config{RootCAs: pool, ServerName: svcName})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	return conn.ConnectionState().PeerCertificates[0].SerialNumber.Text(16)
}

// until polls f every 10ms for at most 10s.
func until(t *testing.T, what string, f func() error) {
	t.Helper()
	var err error
	for range 1000 {
		if err = f(); err == nil {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("%s: %v", what, err)
}

// TestRenewal: the certificate is renewed once half its life has passed
// by the wall clock, and whenever the CA changes, without a restart; a
// fresh key each time.
func TestRenewal(t *testing.T) {
	e := start(t, nil, 10*time.Millisecond)
	first := e.served(t)
	firstKey := e.srv.Certificate().PublicKey
	e.clock.Add(11 * time.Hour) // not yet half of 24h
	time.Sleep(100 * time.Millisecond)
	if got := e.served(t); got != first {
		t.Fatalf("renewed at 11h of 24h: %s -> %s", first, got)
	}
	e.clock.Add(90 * time.Minute)
	until(t, "renewal at half life", func() error {
		if got := e.served(t); got == first {
			return fmt.Errorf("still serving %s", got)
		}
		return nil
	})
	if k := e.srv.Certificate().PublicKey; fmt.Sprint(k) == fmt.Sprint(firstKey) {
		t.Error("the renewed certificate reuses the key")
	}
	second := e.served(t)
	if err := e.ca.PrepareRoot(t.Context()); err != nil {
		t.Fatal(err)
	}
	until(t, "renewal after a CA change", func() error {
		if got := e.served(t); got == second {
			return fmt.Errorf("still serving %s", got)
		}
		return nil
	})
}

// TestCABundle: both configurations' webhooks get the CA's bundle, a
// caBundle emptied by hand (or by helm) is refilled, a root added by a
// rotation reaches them, and a missing configuration is no error.
func TestCABundle(t *testing.T) {
	stale := []byte("-----BEGIN CERTIFICATE-----\nstale\n-----END CERTIFICATE-----\n")
	kube := fake.NewClientset(
		&admissionregv1.MutatingWebhookConfiguration{ObjectMeta: metav1.ObjectMeta{Name: "mesh-injector"}, Webhooks: []admissionregv1.MutatingWebhook{
			{Name: "inject.mesh.dev"}, {Name: "inject-annotated.mesh.dev", ClientConfig: admissionregv1.WebhookClientConfig{CABundle: stale}},
		}},
		&admissionregv1.ValidatingWebhookConfiguration{ObjectMeta: metav1.ObjectMeta{Name: "mesh-policy-validator"}, Webhooks: []admissionregv1.ValidatingWebhook{{Name: "policy.mesh.dev"}}},
		&admissionregv1.MutatingWebhookConfiguration{ObjectMeta: metav1.ObjectMeta{Name: "someone-elses"}, Webhooks: []admissionregv1.MutatingWebhook{{Name: "x.example"}}},
	)
	e := start(t, kube, 20*time.Millisecond)
	bundles := func() (map[string]int, error) {
		out := map[string]int{}
		m, err := kube.AdmissionregistrationV1().MutatingWebhookConfigurations().Get(t.Context(), "mesh-injector", metav1.GetOptions{})
		if err != nil {
			return nil, err
		}
		v, err := kube.AdmissionregistrationV1().ValidatingWebhookConfigurations().Get(t.Context(), "mesh-policy-validator", metav1.GetOptions{})
		if err != nil {
			return nil, err
		}
		check := func(name string, b []byte) {
			n := 0
			for rest := b; ; n++ {
				var blk *pem.Block
				if blk, rest = pem.Decode(rest); blk == nil {
					break
				}
				c, err := x509.ParseCertificate(blk.Bytes)
				if err != nil || !isRoot(c, e.ca.Bundle()) {
					n = -100
				}
			}
			out[name] = n
		}
		for _, w := range m.Webhooks {
			check(w.Name, w.ClientConfig.CABundle)
		}
		for _, w := range v.Webhooks {
			check(w.Name, w.ClientConfig.CABundle)
		}
		return out, nil
	}
	want := func(roots int) func() error {
		return func() error {
			got, err := bundles()
			if err != nil {
				return err
			}
			for name, n := range got {
				if n != roots {
					return fmt.Errorf("%s has %d of the CA's roots (negative: a foreign certificate), want %d", name, n, roots)
				}
			}
			return nil
		}
	}
	until(t, "caBundles set", want(1))

	m, _ := kube.AdmissionregistrationV1().MutatingWebhookConfigurations().Get(t.Context(), "mesh-injector", metav1.GetOptions{})
	m.Webhooks[0].ClientConfig.CABundle = nil
	if _, err := kube.AdmissionregistrationV1().MutatingWebhookConfigurations().Update(t.Context(), m, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	until(t, "emptied caBundle refilled", want(1))

	if err := e.ca.PrepareRoot(t.Context()); err != nil {
		t.Fatal(err)
	}
	until(t, "new root in the caBundles", want(2))

	other, _ := kube.AdmissionregistrationV1().MutatingWebhookConfigurations().Get(t.Context(), "someone-elses", metav1.GetOptions{})
	if len(other.Webhooks[0].ClientConfig.CABundle) != 0 {
		t.Error("another product's webhook configuration was changed")
	}
	if got := testutil.ToFloat64(mustUpdates(t, e.reg)); got < 3 {
		t.Errorf("%s counts %v updates, want at least 3", webhook.BundleUpdatesMetric, got)
	}
}

func mustUpdates(t *testing.T, reg *prometheus.Registry) prometheus.Collector {
	mfs, _ := reg.Gather()
	var sum float64
	for _, mf := range mfs {
		if mf.GetName() == webhook.BundleUpdatesMetric {
			for _, m := range mf.Metric {
				sum += m.Counter.GetValue()
			}
		}
	}
	return prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "x"}, func() float64 { return sum })
}

func isRoot(c *x509.Certificate, roots []*x509.Certificate) bool {
	for _, r := range roots {
		if r.Equal(c) {
			return true
		}
	}
	return false
}

// TestNewRefuses: a Config missing what the server needs is refused.
func TestNewRefuses(t *testing.T) {
	authority, err := ca.New(t.Context(), ca.Config{TrustDomain: td, Store: &ca.MemoryStore{}, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	in, err := inject.New(inject.Config{}, inject.Mesh{TrustDomain: td, ControllerID: spiffeid.RequireFromString("spiffe://cluster.local/ns/mesh-system/sa/mesh-controller"), Namespace: "mesh-system", Version: "0.1.0"})
	if err != nil {
		t.Fatal(err)
	}
	labels := func(context.Context, string) (map[string]string, error) { return nil, nil }
	ok := webhook.Config{CA: authority, Injector: in, NamespaceLabels: labels, DNSNames: []string{svcName}}
	with := func(f func(*webhook.Config)) webhook.Config { c := ok; f(&c); return c }
	tests := []struct {
		cfg  webhook.Config
		want string
	}{
		{webhook.Config{}, "webhook: Config.CA is required"},
		{with(func(c *webhook.Config) { c.Injector = nil }), "webhook: Config.Injector is required"},
		{with(func(c *webhook.Config) { c.NamespaceLabels = nil }), "webhook: Config.NamespaceLabels is required"},
		{with(func(c *webhook.Config) { c.DNSNames = nil }), "webhook: Config.DNSNames or IPs is required"},
		{with(func(c *webhook.Config) { c.CertTTL = 30 * 24 * time.Hour }), "webhook: CertTTL 720h0m0s is outside [0, 168h0m0s]"},
		{with(func(c *webhook.Config) { c.PatchInterval = -1 }), "webhook: PatchInterval -1ns is negative"},
		{with(func(c *webhook.Config) { c.DNSNames = []string{"*.svc"} }), `webhook: serving certificate: ca: serving certificate: "*.svc" is not a DNS name: `},
	}
	for _, tc := range tests {
		if _, err := webhook.New(tc.cfg); err == nil || !strings.HasPrefix(err.Error(), tc.want) {
			t.Errorf("New(%+v) = %v, want %q", tc.cfg, err, tc.want)
		}
	}
}
