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

// FuzzForServiceAccount: any namespace and ServiceAccount either yield an ID
// that parses back to the same pair, or an error; never a panic, and never
// an ID with extra path segments.
func FuzzForServiceAccount(f *testing.F) {
	td := spiffeid.RequireTrustDomainFromString("cluster.local")
	f.Add("shop", "web")
	f.Add("a/b", "c")
	f.Add("", "")
	f.Add("ns", "sa/../../x")
	f.Fuzz(func(t *testing.T, ns, sa string) {
		id, err := ForServiceAccount(td, ns, sa)
		if err != nil {
			return
		}
		gotNS, gotSA, err := ServiceAccountOf(id)
		if err != nil || gotNS != ns || gotSA != sa {
			t.Fatalf("%q does not round-trip: %q %q %v", id, gotNS, gotSA, err)
		}
	})
}
