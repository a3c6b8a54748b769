package proxy

import (
	"crypto/tls"
	"errors"
	"fmt"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// curves prefers the post-quantum hybrid key exchange.
var curves = []tls.CurveID{tls.X25519MLKEM768, tls.X25519, tls.CurveP256}

// certificate reads the current SVID at every handshake, so a renewal is
// presented from the next handshake on, with no restart and no reload.
func (p *Proxy) certificate() (*tls.Certificate, error) {
	svid, err := p.cfg.Identity.GetX509SVID()
	if err != nil {
		return nil, fmt.Errorf("proxy: no SVID: %w", err)
	}
	c := &tls.Certificate{PrivateKey: svid.PrivateKey, Leaf: svid.Certificates[0]}
	for _, x := range svid.Certificates {
		c.Certificate = append(c.Certificate, x.Raw)
	}
	return c, nil
}

// verifyPeer checks a peer's chain against the current trust bundle and
// returns its SPIFFE ID. It runs in VerifyConnection, so resumed sessions
// are checked against the bundle of now, not of the first handshake.
func (p *Proxy) verifyPeer(cs tls.ConnectionState) (spiffeid.ID, error) {
	if cs.NegotiatedProtocol != ALPN && cs.NegotiatedProtocol != ALPNH2 {
		return spiffeid.ID{}, fmt.Errorf("peer did not negotiate %q or %q", ALPN, ALPNH2)
	}
	if len(cs.PeerCertificates) == 0 {
		return spiffeid.ID{}, errors.New("peer presented no certificate")
	}
	id, _, err := x509svid.Verify(cs.PeerCertificates, p.cfg.Identity)
	if err != nil {
		return spiffeid.ID{}, &tls.CertificateVerificationError{UnverifiedCertificates: cs.PeerCertificates, Err: err}
	}
	if !id.MemberOf(p.cfg.TrustDomain) {
		return spiffeid.ID{}, fmt.Errorf("peer %q is outside trust domain %q", id, p.cfg.TrustDomain)
	}
	return id, nil
}

func (p *Proxy) serverTLS() *tls.Config {
	return &tls.Config{
		MinVersion:       tls.VersionTLS13,
		NextProtos:       []string{ALPNH2, ALPN},
		CurvePreferences: curves,
		// The chain is verified against the SPIFFE bundle in
		// VerifyConnection, not against a Web PKI pool.
		ClientAuth:     tls.RequireAnyClientCert,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return p.certificate() },
		VerifyConnection: func(cs tls.ConnectionState) error {
			_, err := p.verifyPeer(cs)
			return err
		},
	}
}

// clientTLS is the configuration for one outbound connection, which must
// reach exactly want and speak alpn (ALPN or ALPNH2). Configurations share
// one session cache, keyed by the peer's address, so reconnects resume;
// VerifyConnection still checks the resumed peer against the identity
// expected now.
func (p *Proxy) clientTLS(want spiffeid.ID, addr, alpn string) *tls.Config {
	return &tls.Config{
		MinVersion:         tls.VersionTLS13,
		NextProtos:         []string{alpn},
		CurvePreferences:   curves,
		ClientSessionCache: p.sessions,
		// Verified in VerifyConnection against the SPIFFE bundle and the
		// expected identity.
		InsecureSkipVerify:   true,
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return p.certificate() },
		VerifyConnection: func(cs tls.ConnectionState) error {
			got, err := p.verifyPeer(cs)
			if err != nil {
				return err
			}
			if cs.NegotiatedProtocol != alpn {
				return fmt.Errorf("peer at %s negotiated %q, not %q", addr, cs.NegotiatedProtocol, alpn)
			}
			if got != want {
				how := "new session"
				if cs.DidResume {
					how = "resumed session"
				}
				return fmt.Errorf("%w: peer at %s is %q, want %q (%s)", errWrongIdentity, addr, got, want, how)
			}
			return nil
		},
	}
}
