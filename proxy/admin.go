package proxy

import (
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// IdentityInfo is what /identity answers: the public facts of the SVID the
// proxy serves now. Never key material. The JSON names are a stable
// interface (meshctl identity show, docs/meshctl.md): add, never rename.
type IdentityInfo struct {
	SPIFFEID     string    `json:"spiffeID"`
	TrustDomain  string    `json:"trustDomain"`
	SerialNumber string    `json:"serialNumber"` // hex
	Issuer       string    `json:"issuer"`
	NotBefore    time.Time `json:"notBefore"`
	NotAfter     time.Time `json:"notAfter"`
	KeyType      string    `json:"keyType"` // "ECDSA P-256", "RSA 2048", "Ed25519"
	// BundleRoots are the SHA-256 fingerprints of the trust bundle's roots
	// the proxy verifies peers with.
	BundleRoots []string `json:"bundleRoots"`
	// SignedByRoot is the fingerprint of the bundle root the SVID's chain
	// verifies to; empty if none does (meshctl ca rotate waits for every
	// proxy to serve an SVID under the new root before retiring the old).
	SignedByRoot string `json:"signedByRoot"`
	// LastRenewal is when the proxy installed this SVID; zero if unknown.
	LastRenewal time.Time `json:"lastRenewal,omitzero"`
	// Ready is the proxy's readiness: SVID, policy and destinations.
	Ready        bool `json:"ready"`
	InboundMode  Mode `json:"inboundMode"`
	OutboundMode Mode `json:"outboundMode"`
}

// keyType names a certificate's public key as operators know it.
func keyType(pub any) string {
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		return "ECDSA " + k.Curve.Params().Name
	case *rsa.PublicKey:
		return fmt.Sprintf("RSA %d", k.N.BitLen())
	case ed25519.PublicKey:
		return "Ed25519"
	}
	return fmt.Sprintf("%T", pub)
}

// AdminHandler serves /metrics, /ready, /live, /identity, /policy, the
// rewritten kubelet probes under /app-health/, and /shutdown.
//
// The admin port is not intercepted (the kubelet must reach it), so anyone
// who can reach the pod can reach it: it serves nothing secret, and what
// changes state (/shutdown) is accepted only from the pod itself.
func (p *Proxy) AdminHandler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(p.cfg.Gatherer, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /live", func(w http.ResponseWriter, _ *http.Request) { w.Write([]byte("ok\n")) })
	mux.HandleFunc("GET /ready", func(w http.ResponseWriter, _ *http.Request) {
		if !p.ready.Load() {
			http.Error(w, "not ready: no valid SVID", http.StatusServiceUnavailable)
			return
		}
		w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("GET /identity", func(w http.ResponseWriter, _ *http.Request) {
		svid, err := p.cfg.Identity.GetX509SVID()
		if err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		leaf := svid.Certificates[0]
		info := IdentityInfo{
			SPIFFEID: svid.ID.String(), TrustDomain: svid.ID.TrustDomain().Name(), SerialNumber: leaf.SerialNumber.Text(16),
			NotBefore: leaf.NotBefore, NotAfter: leaf.NotAfter, Issuer: leaf.Issuer.String(),
			KeyType: keyType(leaf.PublicKey), Ready: p.ready.Load(), BundleRoots: []string{},
			InboundMode: p.cfg.InboundMode, OutboundMode: p.cfg.OutboundMode,
		}
		if r, ok := p.cfg.Identity.(interface{ LastRenewal() time.Time }); ok {
			info.LastRenewal = r.LastRenewal()
		}
		if b, err := p.cfg.Identity.GetX509BundleForTrustDomain(p.cfg.TrustDomain); err == nil {
			top := svid.Certificates[len(svid.Certificates)-1]
			for _, r := range b.X509Authorities() {
				info.BundleRoots = append(info.BundleRoots, fingerprint(r))
				if info.SignedByRoot == "" && top.CheckSignatureFrom(r) == nil {
					info.SignedByRoot = fingerprint(r)
				}
			}
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(info)
	})
	mux.HandleFunc("GET /policy", p.servePolicy)
	if p.cfg.AppHealth != nil {
		// A pod is ready only when its proxy is: until the proxy has its
		// SVID, policy and destinations, requests sent to the pod would
		// be refused, so its readiness probes fail and it is no
		// Service's endpoint yet. Liveness is the application's alone.
		mux.Handle("/app-health/", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if strings.HasSuffix(r.URL.Path, "/readyz") && !p.ready.Load() {
				http.Error(w, "not ready: the mesh proxy is not ready yet", http.StatusServiceUnavailable)
				return
			}
			p.cfg.AppHealth.ServeHTTP(w, r)
		}))
	}
	// Jobs call it when their main container is done, so the pod can
	// finish: from inside the pod only.
	mux.HandleFunc("POST /shutdown", func(w http.ResponseWriter, r *http.Request) {
		if !fromLoopback(r) {
			p.refuse("admin", "shutdown_not_from_loopback", "source", r.RemoteAddr)
			http.Error(w, "shutdown is accepted only from the pod itself (loopback)", http.StatusForbidden)
			return
		}
		p.Shutdown()
		w.Write([]byte("shutting down\n"))
	})
	return mux
}

// fromLoopback reports whether a request came from the pod's own loopback
// interface. The admin port is never redirected, so the address is the
// real peer's.
func fromLoopback(r *http.Request) bool {
	ap, err := netip.ParseAddrPort(r.RemoteAddr)
	return err == nil && ap.Addr().Unmap().IsLoopback()
}

func (p *Proxy) serveAdmin(ctx context.Context, ln net.Listener) error {
	srv := &http.Server{Handler: p.AdminHandler(), ReadHeaderTimeout: 5 * time.Second}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case <-ctx.Done():
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
		<-errc
		return nil
	case err := <-errc:
		if errors.Is(err, http.ErrServerClosed) {
			return nil
		}
		return err
	}
}

// fingerprint is a certificate's SHA-256 in hex, as ca.Fingerprint names
// roots everywhere else. It is not imported from package ca, which would
// link the CA and client-go into the proxy (most of its idle memory).
func fingerprint(c *x509.Certificate) string {
	sum := sha256.Sum256(c.Raw)
	return hex.EncodeToString(sum[:])
}
