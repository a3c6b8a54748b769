package castatus

import (
	"encoding/hex"
	"errors"
	"fmt"

	"github.com/mesh-dev/mesh/ca"
)

// check says whether d describes a CA as ca.CA.Status publishes one: one
// active root, under which the issuers are, at most one prepared and one
// retiring root, fingerprints that are SHA-256s, each root once. Anyone
// allowed to patch the ConfigMap can write it, and meshctl decides
// rotation steps and check results from it, so a document that names no
// active root, or an issuer under a root the bundle lacks, is refused here
// rather than misread there.
func (d *Document) check() error {
	if d.Issuer.Fingerprint == "" || len(d.Roots) == 0 {
		return errors.New("no issuer or no roots")
	}
	count := map[string]int{}
	seen := map[string]bool{}
	var active string
	for i, r := range d.Roots {
		if err := checkCert(r); err != nil {
			return fmt.Errorf("roots[%d]: %w", i, err)
		}
		if r.Root != "" {
			return fmt.Errorf("roots[%d]: a root names a root (%q)", i, r.Root)
		}
		if seen[r.Fingerprint] {
			return fmt.Errorf("roots[%d]: fingerprint %s twice in the bundle", i, r.Fingerprint)
		}
		seen[r.Fingerprint] = true
		count[r.Role]++
		if r.Role == ca.RoleActive {
			active = r.Fingerprint
		}
	}
	switch {
	case count[ca.RoleActive] != 1:
		return fmt.Errorf("%d active roots, want 1", count[ca.RoleActive])
	case count[ca.RolePrepared] > 1 || count[ca.RoleRetiring] > 1:
		return fmt.Errorf("%d prepared and %d retiring roots, want at most one of each", count[ca.RolePrepared], count[ca.RoleRetiring])
	case count[ca.RoleRetiring] == 1 && d.RetireAfter.IsZero():
		// meshctl ca rotate waits for it before retire-root.
		return errors.New("a root is retiring, and retireAfter is not set")
	case d.SVIDTTL < 0 || d.MaxSVIDTTL < 0:
		return fmt.Errorf("negative SVID lifetime (svidTTL %d, maxSVIDTTL %d)", d.SVIDTTL, d.MaxSVIDTTL)
	}
	issuers := []struct {
		name string
		c    *ca.CertStatus
		role string
	}{{"issuer", &d.Issuer, ca.RoleActive}, {"nextIssuer", d.NextIssuer, ca.RolePrepared}}
	for _, is := range issuers {
		if is.c == nil {
			continue
		}
		if err := checkCert(*is.c); err != nil {
			return fmt.Errorf("%s: %w", is.name, err)
		}
		if is.c.Role != is.role {
			return fmt.Errorf("%s: role %q, want %q", is.name, is.c.Role, is.role)
		}
		if is.c.Root != active {
			return fmt.Errorf("%s: under root %q, not the active root %s", is.name, is.c.Root, active)
		}
	}
	return nil
}

// checkCert checks one certificate's fields.
func checkCert(c ca.CertStatus) error {
	switch c.Role {
	case ca.RoleActive, ca.RolePrepared, ca.RoleRetiring, ca.RoleTrusted:
	default:
		return fmt.Errorf("unknown role %q", c.Role)
	}
	if b, err := hex.DecodeString(c.Fingerprint); err != nil || len(b) != 32 || hex.EncodeToString(b) != c.Fingerprint {
		return fmt.Errorf("fingerprint %q is not a SHA-256 in lower-case hex", c.Fingerprint)
	}
	if c.NotAfter.Before(c.NotBefore) {
		return fmt.Errorf("%s: not after %s is before not before %s", c.Fingerprint, c.NotAfter, c.NotBefore)
	}
	return nil
}
