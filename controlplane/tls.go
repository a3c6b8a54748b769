package controlplane

import (
	"crypto/tls"
	"errors"
	"fmt"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// ServerTLS is the identity port's TLS: the controller's SVID, and a
// client SVID verified against the bundle when one is given. The identity
// service's callers have none yet (they come for their first), so a
// client certificate is optional at the handshake; the control-plane
// methods refuse a caller without a verified one.
func ServerTLS(svid x509svid.Source, bundle x509bundle.Source) *tls.Config {
	c := tlsconfig.TLSServerConfig(svid)
	c.ClientAuth = tls.RequestClientCert
	// VerifyConnection, not VerifyPeerCertificate: it also runs on
	// resumed sessions.
	c.VerifyConnection = func(cs tls.ConnectionState) error {
		if len(cs.PeerCertificates) == 0 {
			return nil
		}
		_, chains, err := x509svid.Verify(cs.PeerCertificates, bundle)
		if err != nil {
			return fmt.Errorf("controlplane: client SVID: %w", err)
		}
		if len(chains) == 0 {
			return errors.New("controlplane: client SVID: no chain")
		}
		return nil
	}
	return c
}
