// Package identity turns Kubernetes workload identity into SPIFFE identity.
//
// A pod's identity is spiffe://<trust-domain>/ns/<namespace>/sa/<serviceaccount>.
// The identity service (Server) signs an X509-SVID for it when the caller
// proves, with a projected ServiceAccount token that the API server's
// TokenReview accepts for the mesh's audience, that it runs in a live pod
// of that ServiceAccount. The SPIFFE ID comes from the review, never from
// the request.
//
// Subpackages: api/v1 is the gRPC API, source is the proxy's side (a
// go-spiffe X509 source that keeps an SVID fresh), and workload serves the
// SPIFFE Workload API to applications in the pod.
package identity
