package identity

import (
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/mesh-dev/mesh/identity/meshid"
)

// DefaultTrustDomain is the trust domain of a mesh installed with defaults.
const DefaultTrustDomain = "cluster.local"

// ForServiceAccount is the SPIFFE ID of a Kubernetes ServiceAccount:
// spiffe://<trust-domain>/ns/<namespace>/sa/<serviceaccount>. It is
// meshid.ForServiceAccount, which the proxy uses without linking this
// package.
func ForServiceAccount(td spiffeid.TrustDomain, namespace, serviceAccount string) (spiffeid.ID, error) {
	return meshid.ForServiceAccount(td, namespace, serviceAccount)
}

// ServiceAccountOf parses a mesh SPIFFE ID back into its namespace and
// ServiceAccount (meshid.ServiceAccountOf). IDs of any other shape are
// refused.
func ServiceAccountOf(id spiffeid.ID) (namespace, serviceAccount string, err error) {
	return meshid.ServiceAccountOf(id)
}
