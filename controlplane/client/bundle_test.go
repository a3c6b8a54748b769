package client_test

import (
	"crypto/x509"
	"errors"
	"slices"
	"sync"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	controlplanev1 "github.com/mesh-dev/mesh/controlplane/api/v1"
	"github.com/mesh-dev/mesh/internal/testpki"
)

// TestBundle: every bundle is checked whole before the callback sees it;
// a refused one is counted by reason and the previous one stays. The
// cases run in order on one stream, each starting from the last accepted
// bundle.
func TestBundle(t *testing.T) {
	root1 := testpki.New(t, "cluster.local").CA.Bundle()[0]
	root2 := testpki.New(t, "cluster.local").CA.Bundle()[0]
	refusedRoot := testpki.New(t, "cluster.local").CA.Bundle()[0]
	leaf := testpki.New(t, "cluster.local").SVID(t, "spiffe://cluster.local/ns/shop/sa/web").Certificates[0]

	srv := newFakeCP()
	addr, _ := serve(t, srv)
	reg := prometheus.NewRegistry()
	var mu sync.Mutex
	var got [][]*x509.Certificate // what the callback accepted, in order
	cfg := config(dial(t, addr))
	cfg.Registerer = reg
	cfg.Bundle = func(roots []*x509.Certificate) error {
		if slices.ContainsFunc(roots, refusedRoot.Equal) {
			return errors.New("tls: refused")
		}
		mu.Lock()
		defer mu.Unlock()
		got = append(got, roots)
		return nil
	}
	c := start(t, cfg)
	st := next(t, srv.bundles)
	accepted := func() [][]*x509.Certificate {
		mu.Lock()
		defer mu.Unlock()
		return slices.Clone(got)
	}

	tooMany := make([][]byte, 65)
	for i := range tooMany {
		tooMany[i] = root1.Raw
	}
	for _, tc := range []struct {
		name   string
		roots  [][]byte
		reason string              // refused for this reason; "" accepted
		want   []*x509.Certificate // the callback's roots when accepted
	}{
		{"one root", [][]byte{root1.Raw}, "", []*x509.Certificate{root1}},
		{"empty", nil, "empty_bundle", nil},
		{"an empty root", [][]byte{{}}, "bad_root", nil},
		{"garbage", [][]byte{[]byte("-----BEGIN CERTIFICATE-----")}, "bad_root", nil},
		{"a good root beside garbage", [][]byte{root2.Raw, []byte("junk")}, "bad_root", nil},
		{"a leaf, not a CA", [][]byte{leaf.Raw}, "bad_root", nil},
		{"a root with trailing bytes", [][]byte{append(slices.Clone(root2.Raw), 0)}, "bad_root", nil},
		{"too many roots", tooMany, "too_many_roots", nil},
		{"refused by the callback", [][]byte{refusedRoot.Raw}, "refused", nil},
		{"rotation: old and next root", [][]byte{root1.Raw, root2.Raw}, "", []*x509.Certificate{root1, root2}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := len(accepted())
			rejected := metric(t, reg, "mesh_proxy_control_rejected_total", "kind", "bundle", "reason", tc.reason)
			st.push(t, &controlplanev1.TrustBundle{Roots: tc.roots})
			if tc.reason == "" {
				waitFor(t, "the bundle to be accepted", func() bool { return len(accepted()) > before })
				last := accepted()[before]
				if !slices.EqualFunc(last, tc.want, (*x509.Certificate).Equal) {
					t.Fatalf("the callback got %d roots, not the %d sent", len(last), len(tc.want))
				}
				return
			}
			waitFor(t, "the bundle to be refused", func() bool {
				return metric(t, reg, "mesh_proxy_control_rejected_total", "kind", "bundle", "reason", tc.reason) == rejected+1
			})
			if n := len(accepted()); n != before {
				t.Fatalf("a refused bundle reached the callback (%d calls, want %d)", n, before)
			}
		})
	}
	if !c.Ready() {
		t.Fatal("not Ready with a bundle accepted")
	}
	if n := metric(t, reg, "mesh_proxy_control_reconnects_total", "kind", "bundle"); n != 0 {
		t.Fatalf("refused bundles reconnected the stream %v times; a reconnect would only fetch the same bundle", n)
	}
}
