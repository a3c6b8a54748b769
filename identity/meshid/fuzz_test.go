package meshid

import (
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// FuzzServiceAccountOf parses arbitrary IDs, as the audit verifier does a
// stream's signer: what it accepts is exactly the ID ForServiceAccount
// builds from the namespace and ServiceAccount it returns; never a panic.
func FuzzServiceAccountOf(f *testing.F) {
	for _, s := range []string{
		"spiffe://cluster.local/ns/shop/sa/web",
		"spiffe://cluster.local/ns/shop/sa/web/x",
		"spiffe://cluster.local/ns//sa/web",
		"spiffe://cluster.local/ns/Shop/sa/web",
		"spiffe://cluster.local/sa/web/ns/shop",
		"spiffe://cluster.local",
		"spiffe://example.org/ns/a/sa/b.c",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		id, err := spiffeid.FromString(s)
		if err != nil {
			return
		}
		ns, sa, err := ServiceAccountOf(id)
		if err != nil {
			return
		}
		want, err := ForServiceAccount(id.TrustDomain(), ns, sa)
		if err != nil || want != id {
			t.Fatalf("ServiceAccountOf(%q) = %q, %q, accepted, but ForServiceAccount gives %q, %v", id, ns, sa, want, err)
		}
	})
}
