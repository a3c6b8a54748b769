package castatus

import (
	"encoding/json"
	"testing"
)

// FuzzParseRequest: whatever the annotation holds, ParseRequest returns a
// request with an id and a known step, or an error; never a panic.
func FuzzParseRequest(f *testing.F) {
	for _, s := range []string{
		`{"id":"1","step":"prepare-root"}`, `{"id":"","step":"retire-root"}`, `{"id":"x","step":"PREPARE-ROOT"}`,
		`{"id":"x","step":"prepare-root","step":"shred"}`, `{"id":1}`, `null`, `[]`, "", "\x00", `{"id":"x","step":"rotate-issuer"}trailing`,
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		r, err := ParseRequest(raw)
		if err != nil {
			return
		}
		if r.ID == "" || r.Step.Valid() != nil {
			t.Fatalf("ParseRequest(%q) accepted %+v", raw, r)
		}
		// What was accepted is what the annotation says.
		var again Request
		if json.Unmarshal([]byte(raw), &again) != nil || again != r {
			t.Fatalf("ParseRequest(%q) = %+v, json says %+v", raw, r, again)
		}
	})
}
