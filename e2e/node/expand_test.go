package node

import "testing"

func TestExpand(t *testing.T) {
	env := map[string]string{"POD_NAME": "web-1", "EMPTY": "", "X": "$(POD_NAME)"}
	for _, tc := range []struct{ in, want string }{
		{"--replica=$(POD_NAME)", "--replica=web-1"},
		{"$(POD_NAME)$(POD_NAME)", "web-1web-1"},
		{"$$(POD_NAME)", "$(POD_NAME)"},  // escaped
		{"$(UNDEFINED)", "$(UNDEFINED)"}, // left as it is
		{"a$(EMPTY)b", "ab"},
		{"$(X)", "$(POD_NAME)"}, // one pass: values are not expanded again
		{"$(POD_NAME", "$(POD_NAME"},
		{"cost: 5$", "cost: 5$"},
		{"$HOME", "$HOME"},
		{"", ""},
	} {
		if got := expand(tc.in, env); got != tc.want {
			t.Errorf("expand(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

func FuzzExpand(f *testing.F) {
	for _, s := range []string{"$(A)", "$$(A)", "$(", "$", "a$(A)b$(B"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		// No variables defined: nothing may change but "$$".
		got := expand(s, nil)
		if len(got) > len(s) {
			t.Fatalf("expand(%q) grew to %q", s, got)
		}
	})
}
