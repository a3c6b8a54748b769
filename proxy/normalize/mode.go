package normalize

import (
	"fmt"
	"strings"
)

// Mode selects how much of a request path Path normalises. The names are
// Istio's pathNormalization values, so an operator's vocabulary carries over.
//
// The zero Mode is not valid: Path and MarshalText reject it, so a configuration
// that forgot to choose a mode fails loudly instead of silently skipping
// normalisation. Constructors fill it in with DefaultMode.
type Mode int

// Modes, from least to most normalisation.
const (
	// None forwards and authorises the path as sent. Only for applications
	// that need byte-exact paths and whose policies have no path rules.
	None Mode = iota + 1
	// Base decodes percent-encoded unreserved characters, turns '\' into
	// '/' and removes dot segments (RFC 3986 6.2.2 and 5.2.4).
	Base
	// MergeSlashes is Base plus merging runs of '/' into one.
	MergeSlashes
	// DecodeAndMergeSlashes is MergeSlashes, but %2F and %5C are decoded to
	// '/' (and normalised as separators) instead of rejected. For
	// applications that decode them anyway; it changes the path's meaning
	// for those that do not.
	DecodeAndMergeSlashes
)

// DefaultMode is what a proxy uses unless configured otherwise: what Envoy's
// edge best practice recommends whenever authorization reads the path.
const DefaultMode = MergeSlashes

var modeNames = [...]string{
	None:                  "NONE",
	Base:                  "BASE",
	MergeSlashes:          "MERGE_SLASHES",
	DecodeAndMergeSlashes: "DECODE_AND_MERGE_SLASHES",
}

func (m Mode) valid() bool { return m >= None && m <= DecodeAndMergeSlashes }

// merges reports whether m merges runs of '/'.
func (m Mode) merges() bool { return m == MergeSlashes || m == DecodeAndMergeSlashes }

// String returns the mode's configuration name, such as "MERGE_SLASHES".
func (m Mode) String() string {
	if !m.valid() {
		return fmt.Sprintf("Mode(%d)", int(m))
	}
	return modeNames[m]
}

// ParseMode parses a mode name (NONE, BASE, MERGE_SLASHES,
// DECODE_AND_MERGE_SLASHES) in any case.
func ParseMode(s string) (Mode, error) {
	for m := None; m <= DecodeAndMergeSlashes; m++ {
		if strings.EqualFold(s, modeNames[m]) {
			return m, nil
		}
	}
	return 0, fmt.Errorf("normalize: path normalization mode %q is not one of %s", s, strings.Join(modeNames[1:], ", "))
}

// MarshalText implements encoding.TextMarshaler, for config files and flags.
func (m Mode) MarshalText() ([]byte, error) {
	if !m.valid() {
		return nil, fmt.Errorf("normalize: path normalization mode %d is not valid", int(m))
	}
	return []byte(modeNames[m]), nil
}

// UnmarshalText implements encoding.TextUnmarshaler with ParseMode, so
// flag.TextVar and strict config decoding accept the same names.
func (m *Mode) UnmarshalText(b []byte) error {
	v, err := ParseMode(string(b))
	if err != nil {
		return err
	}
	*m = v
	return nil
}
