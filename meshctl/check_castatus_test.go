package meshctl

import (
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/runtime"
	k8stesting "k8s.io/client-go/testing"

	"github.com/mesh-dev/mesh/controlplane/castatus"
)

// TestCAStatusReadOncePerPass: the four checks that look at the CA status
// read it once in a pass; a check retried under --wait reads it again,
// since it waits for it to change.
func TestCAStatusReadOncePerPass(t *testing.T) {
	cat := category{"ca", []checker{
		{description: "fresh", run: checkCAStatusFresh},
		{description: "root", run: checkRoot},
		{description: "issuer", run: checkIssuer},
		{description: "proxies trust the roots", run: checkProxiesTrustRoots},
	}}
	for _, tc := range []struct {
		name     string
		notFound int // the first gets answer NotFound
		wait     time.Duration
		gets     int
	}{
		{"one pass", 0, 0, 1},
		{"one pass, not published", 1, 0, 1},
		{"--wait retries the first check, which reads again", 1, 5 * time.Second, 2},
		{"--wait, three retries", 3, 5 * time.Second, 4},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e, cs, _ := env(t, []runtime.Object{caDoc(t, checkNow, 365*24*time.Hour, 30*24*time.Hour)}, nil)
			start := time.Now()
			// checkNow, advancing, so that --wait's deadline comes.
			e.now = func() time.Time { return checkNow.Add(time.Since(start)) }
			gets := 0
			cs.PrependReactor("get", "configmaps", func(a k8stesting.Action) (bool, runtime.Object, error) {
				if a.(k8stesting.GetAction).GetName() != castatus.ConfigMapName {
					return false, nil, nil
				}
				gets++
				if gets <= tc.notFound {
					return true, nil, apierrors.NewNotFound(corev1.Resource("configmaps"), castatus.ConfigMapName)
				}
				return false, nil, nil
			})
			rep := runChecks(t.Context(), e, []category{cat}, tc.wait, 10*time.Millisecond, time.Second)
			if gets != tc.gets {
				t.Errorf("%d gets of the CA status, want %d", gets, tc.gets)
			}
			// What was read once is what every check saw.
			for _, r := range rep.Categories[0].Checks {
				want := ResultSuccess
				if tc.notFound > 0 && tc.wait == 0 {
					want = ResultError
				}
				if r.Result != want {
					t.Errorf("%s: %s %q, want %s", r.Description, r.Result, r.Detail, want)
				}
			}
		})
	}
}
