package client

import (
	"net/netip"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Destination is what the proxy knows of an address. It mirrors
// proxy.Destination field for field, so the integration can switch to that
// type without changing what Lookup answers.
type Destination struct {
	// Meshed: the destination is a pod that runs a proxy; it is dialled
	// over mTLS and must present Identity.
	Meshed   bool
	Identity spiffeid.ID
	// Service: the address is a Service port; the proxy dials one of its
	// ready Endpoints itself. Endpoints is shared with the client's table:
	// callers must not modify it.
	Service   bool
	Endpoints []Endpoint
}

// Endpoint is one ready backend of a Service.
type Endpoint struct {
	Addr     netip.AddrPort
	Meshed   bool
	Identity spiffeid.ID
}
