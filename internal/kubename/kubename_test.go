package kubename

import (
	"slices"
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/util/validation"
)

// checks pairs each check with apimachinery's, which it must agree with.
var checks = []struct {
	name         string
	ours, theirs func(string) []string
}{
	{"DNS1123Label", DNS1123Label, validation.IsDNS1123Label},
	{"DNS1123Subdomain", DNS1123Subdomain, validation.IsDNS1123Subdomain},
	{"LabelKey", LabelKey, validation.IsQualifiedName},
	{"LabelValue", LabelValue, validation.IsValidLabelValue},
	{"PortName", PortName, validation.IsValidPortName},
}

var seeds = []string{
	"", "a", "A", "-", "a-", "-a", "a--b", "my-name", "123-abc", "my.name", "My.Name", "a_b", "_a",
	"example.com", "example.com/key", "example.com/", "/key", "a/b/c", "EXAMPLE.com/key", "a..b", ".a", "a.",
	"http", "http-alt", "8080", "h2c", "a b", "ünïcode", "a\x00b",
	strings.Repeat("a", 15), strings.Repeat("a", 16), strings.Repeat("a", 63), strings.Repeat("a", 64),
	strings.Repeat("a", 253), strings.Repeat("a.", 127), strings.Repeat("a", 254),
	strings.Repeat("a", 254) + "/" + strings.Repeat("b", 64), strings.Repeat("a", 64) + ".com/x",
}

// TestAgreement: for each seed, every check gives apimachinery's verdict
// and messages, in order.
func TestAgreement(t *testing.T) {
	for _, c := range checks {
		for _, s := range seeds {
			if got, want := c.ours(s), c.theirs(s); !slices.Equal(got, want) {
				t.Errorf("%s(%q) = %q, apimachinery says %q", c.name, s, got, want)
			}
		}
	}
}

// TestVerdicts pins a few verdicts on their own, so that a change to both
// implementations at once is noticed too.
func TestVerdicts(t *testing.T) {
	tests := []struct {
		check func(string) []string
		in    string
		valid bool
	}{
		{DNS1123Label, "shop", true},
		{DNS1123Label, "shop.x", false},
		{DNS1123Label, "Shop", false},
		{DNS1123Label, strings.Repeat("a", 64), false},
		{DNS1123Subdomain, "shop.x", true},
		{DNS1123Subdomain, "shop_x", false},
		{LabelKey, "app.kubernetes.io/name", true},
		{LabelKey, "App_1", true},
		{LabelKey, "/app", false},
		{LabelKey, "a/b/c", false},
		{LabelValue, "", true},
		{LabelValue, "v1.2_3-x", true},
		{LabelValue, "-v", false},
		{PortName, "http", true},
		{PortName, "8080", false},
		{PortName, "http--alt", false},
		{PortName, "HTTP", false},
	}
	for _, tc := range tests {
		if got := len(tc.check(tc.in)) == 0; got != tc.valid {
			t.Errorf("%q: valid = %v, want %v", tc.in, got, tc.valid)
		}
	}
}

func FuzzAgreement(f *testing.F) {
	for _, s := range seeds {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		for _, c := range checks {
			if got, want := c.ours(s), c.theirs(s); !slices.Equal(got, want) {
				t.Errorf("%s(%q) = %q, apimachinery says %q", c.name, s, got, want)
			}
		}
	})
}
