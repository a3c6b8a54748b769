package client

import "github.com/mesh-dev/mesh/proxy"

// Destination is what the proxy knows of an address: Lookup answers with
// the proxy's own type, so the Client is the proxy's Destinations.
// Endpoints is shared with the client's table: callers must not modify it.
type Destination = proxy.Destination

// Endpoint is one ready backend of a Service.
type Endpoint = proxy.Endpoint
