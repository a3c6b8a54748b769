package node

import (
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
)

// TestExpandVars: the kubelet's $(VAR) expansion rules.
func TestExpandVars(t *testing.T) {
	env := []string{"POD_NAME=web-0", "NS=shop", "EMPTY=", "NS=prod", "WITH_EQ=a=b", "AGAIN=$(POD_NAME)"}
	for _, tc := range []struct{ in, want string }{
		{"--replica=$(POD_NAME)", "--replica=web-0"},
		{"$(POD_NAME).$(NS).svc", "web-0.prod.svc"}, // the last NS wins
		{"$(EMPTY)x", "x"},
		{"$(WITH_EQ)", "a=b"},
		{"$(UNSET)", "$(UNSET)"},
		{"$$(POD_NAME)", "$(POD_NAME)"},
		{"$$$(POD_NAME)", "$web-0"},
		{"$$", "$"},
		{"a$b", "a$b"},
		{"trailing$", "trailing$"},
		{"$(POD_NAME", "$(POD_NAME"},
		{"$()", "$()"},
		{"$(POD_NAME)$(POD_NAME)", "web-0web-0"},
		{"no vars", "no vars"},
		{"", ""},
		{"ü$(NS)ü", "üprodü"},
		{"$(AGAIN)", "$(POD_NAME)"}, // one pass: values are not expanded again
	} {
		if got := expandVars(tc.in, env); got != tc.want {
			t.Errorf("expandVars(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

// FuzzExpandVars: expansion never panics, leaves strings without $ alone,
// and with no variables set only unescapes $$.
func FuzzExpandVars(f *testing.F) {
	for _, s := range []string{"$(A)", "$$(A)", "$(", "$", "$$$", "a$(B)c$(", "$(A)$(B)"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		got := expandVars(s, []string{"A=1", "B=$(A)"})
		if !strings.Contains(s, "$") && got != s {
			t.Fatalf("expandVars(%q) = %q", s, got)
		}
		if none := expandVars(s, nil); len(none) > len(s) {
			t.Fatalf("expandVars(%q) with no variables grew to %q", s, none)
		}
		if strings.Contains(got, "1") && !strings.Contains(s, "1") && !strings.Contains(s, "$(A)") && !strings.Contains(s, "$(B)") {
			t.Fatalf("expandVars(%q) = %q: a value from nowhere", s, got)
		}
	})
}

// TestEffective: the pod's user and group are the containers' default;
// a container's own win; command and args are expanded.
func TestEffective(t *testing.T) {
	u, g, own := int64(65532), int64(65533), int64(1337)
	p := &corev1.Pod{Spec: corev1.PodSpec{SecurityContext: &corev1.PodSecurityContext{RunAsUser: &u, RunAsGroup: &g}}}
	c := effective(p, corev1.Container{Command: []string{"x", "$(A)"}, Args: []string{"--a=$(A)"}}, []string{"A=1"})
	if *c.SecurityContext.RunAsUser != u || *c.SecurityContext.RunAsGroup != g || c.Command[1] != "1" || c.Args[0] != "--a=1" {
		t.Fatalf("effective = %+v", c)
	}
	orig := corev1.Container{SecurityContext: &corev1.SecurityContext{RunAsUser: &own}}
	c = effective(p, orig, nil)
	if *c.SecurityContext.RunAsUser != own || *c.SecurityContext.RunAsGroup != g {
		t.Fatalf("effective = %+v", c.SecurityContext)
	}
	if orig.SecurityContext.RunAsGroup != nil {
		t.Fatal("effective changed the pod's spec")
	}
	if c := effective(&corev1.Pod{}, corev1.Container{}, nil); c.SecurityContext != nil || c.Command != nil {
		t.Fatalf("effective of an empty container = %+v", c)
	}
}
