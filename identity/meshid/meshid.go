// Package meshid is the shape of a mesh workload's SPIFFE ID:
// spiffe://<trust-domain>/ns/<namespace>/sa/<serviceaccount>.
//
// It is a leaf package apart from package identity (the identity service,
// which links client-go and the CA) so that the proxy, which only reads
// IDs, does not carry the service's code and package initialisation: that
// is most of a proxy's idle memory (docs/benchmarks.md, "What was tuned").
package meshid

import (
	"fmt"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/mesh-dev/mesh/internal/kubename"
)

// ForServiceAccount is the SPIFFE ID of a Kubernetes ServiceAccount:
// spiffe://<trust-domain>/ns/<namespace>/sa/<serviceaccount>.
func ForServiceAccount(td spiffeid.TrustDomain, namespace, serviceAccount string) (spiffeid.ID, error) {
	if td.IsZero() {
		return spiffeid.ID{}, fmt.Errorf("meshid: empty trust domain")
	}
	if errs := kubename.DNS1123Label(namespace); len(errs) > 0 {
		return spiffeid.ID{}, fmt.Errorf("meshid: namespace %q: %s", namespace, strings.Join(errs, "; "))
	}
	if errs := kubename.DNS1123Subdomain(serviceAccount); len(errs) > 0 {
		return spiffeid.ID{}, fmt.Errorf("meshid: service account %q: %s", serviceAccount, strings.Join(errs, "; "))
	}
	id, err := spiffeid.FromSegments(td, "ns", namespace, "sa", serviceAccount)
	if err != nil {
		return spiffeid.ID{}, fmt.Errorf("meshid: %w", err)
	}
	return id, nil
}

// ServiceAccountOf parses a mesh SPIFFE ID back into its namespace and
// ServiceAccount. IDs of any other shape are refused.
func ServiceAccountOf(id spiffeid.ID) (namespace, serviceAccount string, err error) {
	parts := strings.Split(strings.TrimPrefix(id.Path(), "/"), "/")
	if len(parts) != 4 || parts[0] != "ns" || parts[2] != "sa" {
		return "", "", fmt.Errorf("meshid: %q is not of the form spiffe://<trust-domain>/ns/<namespace>/sa/<serviceaccount>", id)
	}
	want, err := ForServiceAccount(id.TrustDomain(), parts[1], parts[3])
	if err != nil {
		return "", "", err
	}
	if want != id {
		return "", "", fmt.Errorf("meshid: %q is not canonical (want %q)", id, want)
	}
	return parts[1], parts[3], nil
}
