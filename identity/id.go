package identity

import (
	"fmt"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"k8s.io/apimachinery/pkg/util/validation"
)

// DefaultTrustDomain is the trust domain of a mesh installed with defaults.
const DefaultTrustDomain = "cluster.local"

// ForServiceAccount is the SPIFFE ID of a Kubernetes ServiceAccount:
// spiffe://<trust-domain>/ns/<namespace>/sa/<serviceaccount>.
func ForServiceAccount(td spiffeid.TrustDomain, namespace, serviceAccount string) (spiffeid.ID, error) {
	if td.IsZero() {
		return spiffeid.ID{}, fmt.Errorf("identity: empty trust domain")
	}
	if errs := validation.IsDNS1123Label(namespace); len(errs) > 0 {
		return spiffeid.ID{}, fmt.Errorf("identity: namespace %q: %s", namespace, strings.Join(errs, "; "))
	}
	if errs := validation.IsDNS1123Subdomain(serviceAccount); len(errs) > 0 {
		return spiffeid.ID{}, fmt.Errorf("identity: service account %q: %s", serviceAccount, strings.Join(errs, "; "))
	}
	id, err := spiffeid.FromSegments(td, "ns", namespace, "sa", serviceAccount)
	if err != nil {
		return spiffeid.ID{}, fmt.Errorf("identity: %w", err)
	}
	return id, nil
}

// ServiceAccountOf parses a mesh SPIFFE ID back into its namespace and
// ServiceAccount. IDs of any other shape are refused.
func ServiceAccountOf(id spiffeid.ID) (namespace, serviceAccount string, err error) {
	parts := strings.Split(strings.TrimPrefix(id.Path(), "/"), "/")
	if len(parts) != 4 || parts[0] != "ns" || parts[2] != "sa" {
		return "", "", fmt.Errorf("identity: %q is not of the form spiffe://<trust-domain>/ns/<namespace>/sa/<serviceaccount>", id)
	}
	want, err := ForServiceAccount(id.TrustDomain(), parts[1], parts[3])
	if err != nil {
		return "", "", err
	}
	if want != id {
		return "", "", fmt.Errorf("identity: %q is not canonical (want %q)", id, want)
	}
	return parts[1], parts[3], nil
}
