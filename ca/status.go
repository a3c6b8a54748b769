package ca

import (
	"context"
	"crypto/x509"
	"errors"
	"slices"
	"time"
)

// Roles of the certificates in a Status.
const (
	RoleActive   = "active"   // the root the issuer chains to; the issuer signing now
	RolePrepared = "prepared" // a root added by PrepareRoot; an issuer prepared by issuer rotation
	RoleRetiring = "retiring" // the previous root, after ActivateRoot
	RoleTrusted  = "trusted"  // any other root in the bundle (a user-supplied bundle's extra roots)
)

// Status is the CA's public state: certificates and rotation, never keys.
// Its JSON is what `meshctl ca show` and `meshctl check` read from the
// controller's status ConfigMap; add fields, never rename them.
type Status struct {
	TrustDomain string `json:"trustDomain"`
	// Roots is every root of the trust bundle.
	Roots []CertStatus `json:"roots"`
	// Issuer signs SVIDs now; NextIssuer, if any, takes over at five
	// sixths of the issuer's life (or at `meshctl ca rotate --issuer`).
	Issuer     CertStatus  `json:"issuer"`
	NextIssuer *CertStatus `json:"nextIssuer,omitempty"`
	// RetireAfter is when the retiring root may leave the bundle: no SVID
	// signed under it is valid past it. Zero when no root is retiring.
	RetireAfter time.Time `json:"retireAfter,omitzero"`
	// External is a user-supplied CA: mesh rotates nothing of it.
	External bool `json:"external"`
	// SVIDTTL and MaxSVIDTTL are the lifetimes the CA signs SVIDs for.
	SVIDTTL    time.Duration `json:"svidTTL"`
	MaxSVIDTTL time.Duration `json:"maxSVIDTTL"`
}

// CertStatus describes one CA certificate.
type CertStatus struct {
	Role string `json:"role"`
	// Fingerprint is the SHA-256 of the certificate, hex: what a proxy's
	// /identity lists in bundleRoots.
	Fingerprint  string    `json:"fingerprint"`
	Subject      string    `json:"subject"`
	SerialNumber string    `json:"serialNumber"` // hex
	NotBefore    time.Time `json:"notBefore"`
	NotAfter     time.Time `json:"notAfter"`
	// Root is an issuer's root's fingerprint.
	Root string `json:"root,omitempty"`
}

func certStatus(role string, c *x509.Certificate) CertStatus {
	return CertStatus{Role: role, Fingerprint: fingerprint(c), Subject: c.Subject.String(), SerialNumber: c.SerialNumber.Text(16), NotBefore: c.NotBefore, NotAfter: c.NotAfter}
}

// Status reports the CA's public state as last loaded.
func (c *CA) Status() Status {
	c.mu.RLock()
	defer c.mu.RUnlock()
	st := c.st
	s := Status{TrustDomain: c.cfg.TrustDomain.Name(), External: c.cfg.External, SVIDTTL: c.cfg.SVIDTTL, MaxSVIDTTL: c.cfg.MaxSVIDTTL}
	active := st.root.cert()
	for i, r := range st.bundle {
		// A user-supplied bundle may hold a root twice: it is one root.
		if slices.ContainsFunc(st.bundle[:i], r.Equal) {
			continue
		}
		role := RoleTrusted
		switch {
		case r.Equal(active):
			role = RoleActive
		case st.nextRoot != nil && r.Equal(st.nextRoot.cert()):
			role = RolePrepared
		case st.retiringRoot != nil && r.Equal(st.retiringRoot):
			role = RoleRetiring
		}
		s.Roots = append(s.Roots, certStatus(role, r))
	}
	s.Issuer = certStatus(RoleActive, st.issuer.cert())
	s.Issuer.Root = fingerprint(active)
	if st.nextIssuer != nil {
		ni := certStatus(RolePrepared, st.nextIssuer.cert())
		ni.Root = fingerprint(active)
		s.NextIssuer = &ni
	}
	if st.retiringRoot != nil {
		s.RetireAfter = st.rootActivatedAt.Add(c.cfg.MaxSVIDTTL)
	}
	return s
}

// RotateIssuerNow replaces the active issuer with a new one signed by the
// active root at once, whatever its age (`meshctl ca rotate --issuer`).
// Peers need no new bundle, and SVIDs of the old issuer keep verifying
// until they expire, so no verification step is needed around it.
func (c *CA) RotateIssuerNow(ctx context.Context) error {
	return c.step(ctx, func(st *state) error {
		if st.root.key == nil {
			return errors.New("ca: the root's key was not supplied: rotate a user-supplied CA by hand")
		}
		ni, err := c.newIssuer(&st.root, c.cfg.Now())
		if err != nil {
			return err
		}
		st.issuer, st.nextIssuer = *ni, nil
		return nil
	})
}
