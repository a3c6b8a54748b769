package ca

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// Issuer rotation points, as fractions of the issuer's life (SPIRE's
// two-slot scheme): prepare the next issuer at half its life, activate it
// at five sixths.
const (
	prepareAt  = 1.0 / 2
	activateAt = 5.0 / 6
)

func lifePoint(notBefore, notAfter time.Time, frac float64) time.Time {
	return notBefore.Add(time.Duration(float64(notAfter.Sub(notBefore)) * frac))
}

// RotateIssuer takes the step of issuer rotation that is due now, if any:
// at half the active issuer's life it prepares the next issuer (signed by
// the same root, so no peer needs a new bundle), and at five sixths it
// activates it. It is safe to call often, and from several replicas.
func (c *CA) RotateIssuer(ctx context.Context) error {
	if err := c.reload(ctx); err != nil {
		return err
	}
	c.mu.RLock()
	st, version := c.st, c.version
	c.mu.RUnlock()
	now := c.cfg.Now()
	cur := st.issuer.cert()
	next := *st
	switch {
	case st.nextIssuer == nil && !now.Before(lifePoint(cur.NotBefore, cur.NotAfter, prepareAt)):
		if st.root.key == nil {
			c.cfg.Logger.Warn("issuer needs rotation but the root key was not supplied; rotate the supplied CA by hand", "issuerNotAfter", cur.NotAfter)
			return nil
		}
		ni, err := c.newIssuer(&st.root, now)
		if err != nil {
			return err
		}
		next.nextIssuer = ni
		c.cfg.Logger.Info("prepared next issuer", "notAfter", ni.cert().NotAfter)
	case st.nextIssuer != nil && !now.Before(lifePoint(cur.NotBefore, cur.NotAfter, activateAt)):
		next.issuer, next.nextIssuer = *st.nextIssuer, nil
		c.cfg.Logger.Info("activated next issuer", "notAfter", next.issuer.cert().NotAfter)
	default:
		return nil
	}
	return c.saveNew(ctx, &next, version)
}

// Run rotates the issuer as it falls due until ctx ends. It checks every
// interval (a minute if zero) against the wall clock rather than sleeping
// until the due time, so a suspended machine does not skip a rotation.
func (c *CA) Run(ctx context.Context, interval time.Duration) error {
	if interval == 0 {
		interval = time.Minute
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		if err := c.RotateIssuer(ctx); err != nil && !errors.Is(err, context.Canceled) {
			c.cfg.Logger.Error("issuer rotation failed; will retry", "err", err)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// RootStatus says where a root rotation stands.
type RootStatus struct {
	// Active is the fingerprint of the root the issuer chains to.
	Active string
	// Prepared is the fingerprint of a root added by PrepareRoot, if any.
	Prepared string
	// Retiring is the fingerprint of the previous root, after ActivateRoot.
	Retiring string
	// RetireAfter is when RetireRoot may run: no SVID of the old root's
	// issuer is valid past it.
	RetireAfter time.Time
	// Bundle is the fingerprints of every trusted root.
	Bundle []string
}

// RootStatus reports the root rotation's state.
func (c *CA) RootStatus(ctx context.Context) (RootStatus, error) {
	if err := c.reload(ctx); err != nil {
		return RootStatus{}, err
	}
	c.mu.RLock()
	defer c.mu.RUnlock()
	s := RootStatus{Active: fingerprint(c.st.root.cert())}
	if c.st.nextRoot != nil {
		s.Prepared = fingerprint(c.st.nextRoot.cert())
	}
	if c.st.retiringRoot != nil {
		s.Retiring = fingerprint(c.st.retiringRoot)
		s.RetireAfter = c.st.rootActivatedAt.Add(c.cfg.MaxSVIDTTL)
	}
	for _, r := range c.st.bundle {
		s.Bundle = append(s.Bundle, fingerprint(r))
	}
	return s, nil
}

// PrepareRoot is step 1 of a root rotation: it makes a new root and adds it
// to the trust bundle. Nothing is signed by it yet. Before ActivateRoot,
// wait until every proxy has the new bundle: mesh-controller pushes it on
// the trust-bundle stream within a second (check each proxy's /identity);
// a proxy cut off from the controller gets it with its next SVID renewal.
func (c *CA) PrepareRoot(ctx context.Context) error {
	return c.step(ctx, func(st *state) error {
		switch {
		case st.nextRoot != nil:
			return errors.New("ca: a new root is already prepared; run ActivateRoot next")
		case st.retiringRoot != nil:
			return errors.New("ca: the previous root rotation is not finished; run RetireRoot first")
		}
		nr, err := c.newRoot()
		if err != nil {
			return err
		}
		st.nextRoot = nr
		st.bundle = append(st.bundle, nr.cert())
		return nil
	})
}

// ActivateRoot is step 2 of a root rotation: the issuer switches to a new
// one signed by the prepared root, which becomes the active root. The old
// root stays in the bundle, so SVIDs it issued keep verifying.
func (c *CA) ActivateRoot(ctx context.Context) error {
	return c.step(ctx, func(st *state) error {
		if st.nextRoot == nil {
			return errors.New("ca: no root is prepared; run PrepareRoot first")
		}
		now := c.cfg.Now()
		issuer, err := c.newIssuer(st.nextRoot, now)
		if err != nil {
			return err
		}
		st.retiringRoot = st.root.cert()
		st.rootActivatedAt = now
		st.root, st.issuer = *st.nextRoot, *issuer
		st.nextRoot, st.nextIssuer = nil, nil
		return nil
	})
}

// RetireRoot is step 3 of a root rotation: the previous root leaves the
// bundle. It refuses while an SVID signed under the old root may still be
// valid (MaxSVIDTTL after ActivateRoot).
func (c *CA) RetireRoot(ctx context.Context) error {
	return c.step(ctx, func(st *state) error {
		if st.retiringRoot == nil {
			return errors.New("ca: no root is being retired; run PrepareRoot and ActivateRoot first")
		}
		if after := st.rootActivatedAt.Add(c.cfg.MaxSVIDTTL); c.cfg.Now().Before(after) {
			return fmt.Errorf("ca: SVIDs signed under the old root may be valid until %s; retire it after that", after.UTC().Format(time.RFC3339))
		}
		var kept = st.bundle[:0:0]
		for _, r := range st.bundle {
			if !r.Equal(st.retiringRoot) {
				kept = append(kept, r)
			}
		}
		st.bundle, st.retiringRoot, st.rootActivatedAt = kept, nil, time.Time{}
		return nil
	})
}

// step applies one root-rotation change to a fresh copy of the stored state
// and saves it; a concurrent change fails it with ErrConflict.
func (c *CA) step(ctx context.Context, change func(*state) error) error {
	if err := c.reload(ctx); err != nil {
		return err
	}
	c.mu.RLock()
	cp := *c.st
	cp.bundle = append(cp.bundle[:0:0], c.st.bundle...)
	version := c.version
	c.mu.RUnlock()
	if err := change(&cp); err != nil {
		return err
	}
	return c.saveNew(ctx, &cp, version)
}
