package meshproxy

import (
	"errors"
	"slices"
	"testing"
)

type writes struct {
	got  []string
	fail bool
}

func (w *writes) Write(p []byte) (int, error) {
	w.got = append(w.got, string(p))
	if w.fail {
		return 0, errors.New("closed")
	}
	return len(p), nil
}

// Each complete line reaches standard output in one Write, however the
// audit writer's flushes cut them.
func TestLineCopy(t *testing.T) {
	for _, tc := range []struct {
		name string
		in   []string
		want []string
	}{
		{"whole lines", []string{"a\nb\n"}, []string{"a\n", "b\n"}},
		{"cut mid-line", []string{`{"type":"me`, `sh.audit.v1"}` + "\n"}, []string{`{"type":"mesh.audit.v1"}` + "\n"}},
		{"cut in three", []string{"ab", "cd", "ef\ngh"}, []string{"abcdef\n"}},
		{"empty writes", []string{"", "x\n", ""}, []string{"x\n"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := &writes{}
			l := &lineCopy{w: w}
			for _, p := range tc.in {
				if n, err := l.Write([]byte(p)); n != len(p) || err != nil {
					t.Fatalf("Write(%q) = %d, %v", p, n, err)
				}
			}
			if !slices.Equal(w.got, tc.want) {
				t.Fatalf("writes %q, want %q", w.got, tc.want)
			}
		})
	}
}

// A failing standard output never fails the audit file's writes.
func TestLineCopyDropsErrors(t *testing.T) {
	l := &lineCopy{w: &writes{fail: true}}
	if n, err := l.Write([]byte("a\nb")); n != 3 || err != nil {
		t.Fatalf("Write = %d, %v; want 3, nil", n, err)
	}
}
