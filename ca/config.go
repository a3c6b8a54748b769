package ca

import (
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Defaults for Config's zero values.
const (
	DefaultRootTTL   = 365 * 24 * time.Hour
	DefaultIssuerTTL = 30 * 24 * time.Hour
	DefaultSVIDTTL   = time.Hour
	DefaultMaxTTL    = 24 * time.Hour
	DefaultBackdate  = 30 * time.Second
)

// Config configures a CA.
type Config struct {
	// TrustDomain the CA issues identities in. Required.
	TrustDomain spiffeid.TrustDomain
	// Store persists the CA's keys and certificates. Required.
	Store Store
	// External means the store's contents were supplied by the user
	// (existingSecret): the CA never generates a root or writes to the
	// store, and issuer rotation happens only if the root key was supplied.
	External bool
	// RootTTL is the lifetime of generated roots. Zero means 1 year.
	RootTTL time.Duration
	// IssuerTTL is the lifetime of generated issuers. Zero means 30 days.
	IssuerTTL time.Duration
	// SVIDTTL is the default SVID lifetime. Zero means 1 hour.
	SVIDTTL time.Duration
	// MaxSVIDTTL caps requested SVID lifetimes. Zero means 24 hours.
	MaxSVIDTTL time.Duration
	// Backdate moves NotBefore into the past to absorb clock skew. Zero
	// means 30 seconds.
	Backdate time.Duration
	// Now is the clock. Zero means time.Now.
	Now func() time.Time
	// Logger. Zero means slog.Default().
	Logger *slog.Logger
}

func (c *Config) setDefaults() error {
	if c.TrustDomain.IsZero() {
		return errors.New("ca: Config.TrustDomain is required")
	}
	if c.Store == nil {
		return errors.New("ca: Config.Store is required")
	}
	def := func(d *time.Duration, v time.Duration) {
		if *d == 0 {
			*d = v
		}
	}
	def(&c.RootTTL, DefaultRootTTL)
	def(&c.IssuerTTL, DefaultIssuerTTL)
	def(&c.SVIDTTL, DefaultSVIDTTL)
	def(&c.MaxSVIDTTL, DefaultMaxTTL)
	def(&c.Backdate, DefaultBackdate)
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	for name, d := range map[string]time.Duration{"RootTTL": c.RootTTL, "IssuerTTL": c.IssuerTTL, "SVIDTTL": c.SVIDTTL, "MaxSVIDTTL": c.MaxSVIDTTL, "Backdate": c.Backdate} {
		if d < 0 {
			return fmt.Errorf("ca: Config.%s is negative (%s)", name, d)
		}
	}
	switch {
	case c.SVIDTTL > c.MaxSVIDTTL:
		return fmt.Errorf("ca: SVIDTTL %s exceeds MaxSVIDTTL %s", c.SVIDTTL, c.MaxSVIDTTL)
	case c.MaxSVIDTTL*6 > c.IssuerTTL:
		// After activation an issuer has a sixth of its life left; every SVID
		// it signs must fit inside that, or SVIDs would be cut short.
		return fmt.Errorf("ca: MaxSVIDTTL %s must be at most a sixth of IssuerTTL %s", c.MaxSVIDTTL, c.IssuerTTL)
	case c.IssuerTTL > c.RootTTL:
		return fmt.Errorf("ca: IssuerTTL %s exceeds RootTTL %s", c.IssuerTTL, c.RootTTL)
	}
	return nil
}
