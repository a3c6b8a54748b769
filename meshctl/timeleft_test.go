package meshctl

import (
	"strings"
	"testing"
	"time"

	"github.com/mesh-dev/mesh/ca"
)

// TestTimeLeft: one way of showing time left, in ca show's TIME LEFT
// column and in check's certificate lines.
func TestTimeLeft(t *testing.T) {
	for _, tc := range []struct{ d, want string }{
		{"30s", "30s"},
		{"1.9s", "1s"},
		{"-1h", "-1h0m0s"},
		{"-1.5s", "-1s"},
		{"30h0m0.6s", "30h0m0s"},
		{"47h59m59.5s", "47h59m59s"},
		{"48h", "2d0h"},
		{"71h59m", "2d23h"},
		{"8759h59m43s", "364d23h"},
	} {
		d := mustDuration(t, tc.d)
		if got := timeLeft(d); got != tc.want {
			t.Errorf("timeLeft(%s) = %q, want %q", tc.d, got, tc.want)
		}
		// check shows the same, for time left and (from the same
		// function) for its margin.
		c := ca.CertStatus{Role: ca.RoleActive, Subject: "CN=x", NotBefore: checkNow.Add(-time.Hour), NotAfter: checkNow.Add(d)}
		detail, err := validFor(c, checkNow, 0)
		if d <= 0 {
			if err == nil || !strings.Contains(err.Error(), "in "+tc.want+", less than 0s") {
				t.Errorf("check, %s left: %v; want %q", tc.d, err, "in "+tc.want)
			}
			continue
		}
		if want := tc.want + " left, margin 0s"; err != nil || detail != want {
			t.Errorf("check, %s left: %q, %v; want %q", tc.d, detail, err, want)
		}
	}
}
