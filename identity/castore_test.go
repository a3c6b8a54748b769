package identity_test

import (
	"sync"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/mesh-dev/mesh/ca"
)

// TestCASecretStore runs the CA's Secret store on the real API server:
// controllers bootstrapping at once converge on one CA, and a CA supplied
// by the user in an existing Secret is used as it is, never rewritten.
func TestCASecretStore(t *testing.T) {
	e := setup(t)
	ctx := t.Context()
	store := &ca.SecretStore{Client: e.cs, Namespace: "mesh-system", Name: "mesh-ca-race"}
	cas := make([]*ca.CA, 3)
	errs := make([]error, 3)
	var wg sync.WaitGroup
	for i := range cas {
		wg.Go(func() { cas[i], errs[i] = ca.New(ctx, ca.Config{TrustDomain: td, Store: store, Logger: quiet}) })
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("controller %d: %v", i, err)
		}
		if !cas[i].Bundle()[0].Equal(cas[0].Bundle()[0]) {
			t.Fatalf("controller %d has a different root", i)
		}
	}
	sec, err := e.cs.CoreV1().Secrets("mesh-system").Get(ctx, "mesh-ca-race", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := sec.Data[ca.KeyIssuerKey]; !ok {
		t.Fatalf("secret lacks %s: keys %v", ca.KeyIssuerKey, keys(sec.Data))
	}

	// existingSecret: the user's own Secret, without the root key.
	user := sec.Data
	delete(user, ca.KeyRootKey)
	if _, err := e.cs.CoreV1().Secrets("mesh-system").Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "user-ca"}, Data: user}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	before, _ := e.cs.CoreV1().Secrets("mesh-system").Get(ctx, "user-ca", metav1.GetOptions{})
	ext, err := ca.New(ctx, ca.Config{TrustDomain: td, Store: &ca.SecretStore{Client: e.cs, Namespace: "mesh-system", Name: "user-ca"}, External: true, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	if err := ext.PrepareRoot(ctx); err == nil {
		t.Fatal("PrepareRoot changed a user-supplied CA")
	}
	after, _ := e.cs.CoreV1().Secrets("mesh-system").Get(ctx, "user-ca", metav1.GetOptions{})
	if after.ResourceVersion != before.ResourceVersion {
		t.Fatal("the user's Secret was rewritten")
	}
}

func keys(m map[string][]byte) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}
