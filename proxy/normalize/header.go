package normalize

import (
	"fmt"
	"net/http"
	"slices"
	"strings"
)

// meshPrefix is the prefix of every header mesh sets for an application,
// lower-case and with '-' separators.
const meshPrefix = "x-mesh-"

// IsMeshHeader reports whether name is a variant of one of mesh's own
// headers: its lower-cased form, with '_' read as '-', starts with
// "x-mesh-". CGI, WSGI, Rack and PHP hand X_Mesh_Peer_Identity to the
// application under the same name as X-Mesh-Peer-Identity, so a client must
// not be able to send either.
func IsMeshHeader(name string) bool {
	if len(name) < len(meshPrefix) {
		return false
	}
	for i := 0; i < len(meshPrefix); i++ {
		c := name[i]
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		} else if c == '_' {
			c = '-'
		}
		if c != meshPrefix[i] {
			return false
		}
	}
	return true
}

// UnderscoreAction says what Headers does with a header whose name contains
// '_', which frameworks that map '-' to '_' cannot tell from the name with
// '-' (Envoy's headers_with_underscores_action). The zero value is not
// valid; constructors fill in DefaultUnderscoreAction.
type UnderscoreAction int

// Underscore actions.
const (
	// Reject refuses the request (the proxy answers 400).
	Reject UnderscoreAction = iota + 1
	// Drop removes the header and forwards the request.
	Drop
	// Allow forwards the header unchanged.
	Allow
)

// DefaultUnderscoreAction refuses such requests: loud, and safe for
// applications that would confuse X_User with X-User.
const DefaultUnderscoreAction = Reject

var actionNames = [...]string{Reject: "reject", Drop: "drop", Allow: "allow"}

func (a UnderscoreAction) valid() bool { return a >= Reject && a <= Allow }

// String returns the action's configuration name: reject, drop or allow.
func (a UnderscoreAction) String() string {
	if !a.valid() {
		return fmt.Sprintf("UnderscoreAction(%d)", int(a))
	}
	return actionNames[a]
}

// ParseUnderscoreAction parses reject, drop or allow, in any case.
func ParseUnderscoreAction(s string) (UnderscoreAction, error) {
	for a := Reject; a <= Allow; a++ {
		if strings.EqualFold(s, actionNames[a]) {
			return a, nil
		}
	}
	return 0, fmt.Errorf("normalize: underscore header action %q is not one of %s", s, strings.Join(actionNames[1:], ", "))
}

// MarshalText implements encoding.TextMarshaler.
func (a UnderscoreAction) MarshalText() ([]byte, error) {
	if !a.valid() {
		return nil, fmt.Errorf("normalize: underscore header action %d is not valid", int(a))
	}
	return []byte(actionNames[a]), nil
}

// UnmarshalText implements encoding.TextUnmarshaler with
// ParseUnderscoreAction.
func (a *UnderscoreAction) UnmarshalText(b []byte) error {
	v, err := ParseUnderscoreAction(string(b))
	if err != nil {
		return err
	}
	*a = v
	return nil
}

// Headers sanitises h in place before the proxy sets its verified identity
// header. It removes every variant of mesh's own headers (IsMeshHeader);
// then, for each remaining name containing '_', Reject returns an error
// naming it, Drop removes it and Allow keeps it. It returns the names it
// removed, sorted, for a log line or metric; nil when it removed nothing.
//
// On error the mesh headers have still been removed; the caller refuses the
// request. h is typically http.Request.Header; trailers (Request.Trailer)
// are a separate map and need a call of their own.
func Headers(h http.Header, a UnderscoreAction) (removed []string, err error) {
	if !a.valid() {
		return nil, fmt.Errorf("normalize: underscore header action %d is not valid", int(a))
	}
	var bad string
	for name := range h {
		if IsMeshHeader(name) {
			delete(h, name)
			removed = append(removed, name)
			continue
		}
		if strings.IndexByte(name, '_') < 0 {
			continue
		}
		switch a {
		case Drop:
			delete(h, name)
			removed = append(removed, name)
		case Reject:
			// The smallest name, so the error does not depend on map order.
			if bad == "" || name < bad {
				bad = name
			}
		}
	}
	slices.Sort(removed)
	if bad != "" {
		return removed, fmt.Errorf("normalize: header %q has '_' in its name; requests with such headers are refused (underscore action %s)", clip(bad), Reject)
	}
	return removed, nil
}
