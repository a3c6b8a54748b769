package client

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
)

// maxRoots bounds a trust bundle: the mesh's root, the next one during a
// rotation, and room for operators' extra anchors; far more is a broken or
// hostile controller.
const maxRoots = 64

// watchBundle reads one trust bundle stream until it fails. A bundle that
// does not pass parseRoots, or that Config.Bundle refuses, is logged and
// counted and the previous one stays; the stream goes on, since a
// reconnect would only fetch the same bundle again.
func (c *Client) watchBundle(ctx context.Context) (delivered bool, err error) {
	stream, err := c.api.WatchTrustBundle(ctx, c.request())
	if err != nil {
		return false, fmt.Errorf("client: open trust bundle stream: %w", err)
	}
	for {
		msg, err := stream.Recv()
		if err != nil {
			return delivered, fmt.Errorf("client: trust bundle stream: %w", err)
		}
		c.m.messages.WithLabelValues(kindBundle).Inc()
		if !delivered {
			c.m.connected.WithLabelValues(kindBundle).Set(1)
		}
		delivered = true
		roots, reason, err := parseRoots(msg.GetRoots())
		if err == nil {
			if err = c.cfg.Bundle(roots); err != nil {
				reason = reasonRefused
			}
		}
		if err != nil {
			c.m.rejected.WithLabelValues(kindBundle, reason).Inc()
			c.log.Error("trust bundle refused; the previous one stays", "kind", kindBundle, "reason", reason, "err", err)
			continue
		}
		c.bundleReady.Store(true)
		c.log.Info("trust bundle updated", "kind", kindBundle, "roots", len(roots))
	}
}

// parseRoots parses a bundle's roots: at least one, at most maxRoots, each
// a DER certificate of a CA. One bad root refuses the whole bundle, since
// a partial bundle could drop the root that peers' chains end at. The
// reason is the metric label.
func parseRoots(ders [][]byte) (roots []*x509.Certificate, reason string, err error) {
	switch {
	case len(ders) == 0:
		return nil, reasonEmptyBundle, errors.New("client: trust bundle has no root")
	case len(ders) > maxRoots:
		return nil, reasonTooManyRoots, fmt.Errorf("client: trust bundle has %d roots, more than %d", len(ders), maxRoots)
	}
	roots = make([]*x509.Certificate, 0, len(ders))
	for i, der := range ders {
		cert, err := x509.ParseCertificate(der)
		if err != nil {
			return nil, reasonBadRoot, fmt.Errorf("client: trust bundle root %d: %w", i, err)
		}
		if !cert.BasicConstraintsValid || !cert.IsCA {
			return nil, reasonBadRoot, fmt.Errorf("client: trust bundle root %d (%s) is not a CA certificate", i, cert.Subject)
		}
		roots = append(roots, cert)
	}
	return roots, "", nil
}
