package intorstr

import (
	"encoding/json"
	"testing"

	"k8s.io/apimachinery/pkg/util/intstr"
)

var seeds = []string{`8080`, `"http"`, `"8080"`, `null`, `0`, `-1`, `2147483647`, `2147483648`, `1.5`, `1e3`,
	`true`, `[]`, `{}`, `""`, `"a\u0000b"`, `"unterminated`, ` 80`, `"\ud800"`}

// agree decodes in into both types, inside an object as a decoder sees a
// field, and fails if they disagree on the error, the value or its
// re-encoding.
func agree(t *testing.T, in string) {
	t.Helper()
	var ours struct{ P IntOrString }
	var theirs struct{ P intstr.IntOrString }
	doc := []byte(`{"P":` + in + `}`)
	errO, errT := json.Unmarshal(doc, &ours), json.Unmarshal(doc, &theirs)
	if (errO == nil) != (errT == nil) || errO != nil && errO.Error() != errT.Error() {
		t.Fatalf("%s: error %v, intstr's %v", in, errO, errT)
	}
	if errO != nil {
		return
	}
	if int64(ours.P.Type) != int64(theirs.P.Type) || ours.P.IntVal != theirs.P.IntVal || ours.P.StrVal != theirs.P.StrVal {
		t.Fatalf("%s: decoded %+v, intstr %+v", in, ours.P, theirs.P)
	}
	if got, want := ours.P.String(), theirs.P.String(); got != want {
		t.Fatalf("%s: String() = %q, intstr's %q", in, got, want)
	}
	bo, errO := json.Marshal(ours.P)
	bt, errT := json.Marshal(theirs.P)
	if string(bo) != string(bt) || (errO == nil) != (errT == nil) {
		t.Fatalf("%s: encoded %s (%v), intstr %s (%v)", in, bo, errO, bt, errT)
	}
}

func TestAgreement(t *testing.T) {
	for _, s := range seeds {
		agree(t, s)
	}
}

// TestValues pins the decoding on its own.
func TestValues(t *testing.T) {
	tests := []struct {
		in   string
		want IntOrString
	}{
		{`8080`, FromInt32(8080)},
		{`"http"`, FromString("http")},
		{`"8080"`, FromString("8080")},
		{`null`, FromInt32(0)},
	}
	for _, tc := range tests {
		var got IntOrString
		if err := json.Unmarshal([]byte(tc.in), &got); err != nil || got != tc.want {
			t.Errorf("%s: %+v, %v; want %+v", tc.in, got, err, tc.want)
		}
	}
	for _, bad := range []string{`1.5`, `2147483648`, `true`, `[]`} {
		var got IntOrString
		if err := json.Unmarshal([]byte(bad), &got); err == nil {
			t.Errorf("%s: accepted as %+v", bad, got)
		}
	}
	if _, err := json.Marshal(IntOrString{Type: 7}); err == nil {
		t.Error("a value of no type was encoded")
	}
}

func FuzzAgreement(f *testing.F) {
	for _, s := range seeds {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if !json.Valid([]byte(`{"P":` + s + `}`)) {
			return
		}
		agree(t, s)
	})
}
