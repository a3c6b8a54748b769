package load_test

import (
	"bytes"
	"encoding/json"
	"reflect"
	"strings"
	"testing"

	"github.com/mesh-dev/mesh/e2e/load"
)

// TestParseRoundTrip: what the binary encodes, Parse reads back unchanged.
func TestParseRoundTrip(t *testing.T) {
	for _, s := range []load.Summary{
		{Calls: 10, OK: 9, Failed: 1, Hosts: map[string]int{"a": 5, "b": 4}, FirstSeen: map[string]int64{"a": 1, "b": 2}, Codes: map[string]int{"0": 9, "5": 1}, Errors: []string{"call 9: boom"}},
		{Calls: 3, OK: 3, Hosts: map[string]int{"a": 3}, FirstSeen: map[string]int64{"a": 7}, Statuses: map[string]int{"200": 3}},
		{Calls: 1, Failed: 1, Hosts: map[string]int{}, FirstSeen: map[string]int64{}, Statuses: map[string]int{"error": 1}, Errors: []string{"call 0: refused"}},
	} {
		var buf bytes.Buffer
		// As the binary prints it: json.Encoder, with its newline.
		if err := json.NewEncoder(&buf).Encode(s); err != nil {
			t.Fatal(err)
		}
		got, err := load.Parse(buf.Bytes())
		if err != nil {
			t.Fatalf("Parse(%s): %v", buf.Bytes(), err)
		}
		if !reflect.DeepEqual(got, s) {
			t.Errorf("Parse(%s) = %+v, want %+v", buf.Bytes(), got, s)
		}
	}
}

func TestParseRefuses(t *testing.T) {
	for _, c := range []struct{ name, in, want string }{
		{"empty", "", "load: summary \"\": EOF"},
		{"not json", "dial tcp: refused", "load: summary \"dial tcp: refused\": invalid character 'd'"},
		{"unknown field", `{"calls":1,"failures":1}`, `load: summary "{\"calls\":1,\"failures\":1}": json: unknown field "failures"`},
		{"wrong type", `{"calls":"1"}`, `load: summary "{\"calls\":\"1\"}": json: cannot unmarshal string`},
		{"two objects", `{"calls":1}{"calls":2}`, `load: summary "{\"calls\":1}{\"calls\":2}": more than one JSON value`},
		{"trailing garbage", "{\"calls\":1}\nerror: x", "more than one JSON value"},
		{"array", `[1]`, "cannot unmarshal array"},
		{"long", `{"calls":` + strings.Repeat("1", 300), `..."`},
		{"calls unaccounted for", `{"calls":10,"ok":9}`, `9 ok and 0 failed of 10 calls`},
		{"more answered than asked", `{"calls":1,"ok":1,"failed":1}`, `1 ok and 1 failed of 1 calls`},
		{"negative", `{"calls":0,"ok":-1,"failed":1}`, `-1 ok and 1 failed of 0 calls`},
	} {
		t.Run(c.name, func(t *testing.T) {
			s, err := load.Parse([]byte(c.in))
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("Parse(%q) = %+v, %v; want an error containing %q", c.in, s, err, c.want)
			}
			if !reflect.DeepEqual(s, load.Summary{}) {
				t.Errorf("Parse(%q) returned %+v with its error, want the zero Summary", c.in, s)
			}
		})
	}
}

// FuzzParse: no input panics, and what Parse accepts encodes and parses
// back to the same summary.
func FuzzParse(f *testing.F) {
	for _, s := range []string{"", "{}", `{"calls":1,"ok":1,"hosts":{"a":1},"firstSeen":{"a":5}}`, `{"calls":1}{"calls":2}`, `{"codes":{"0":1},"errors":["x"]}`, "null", `{"calls":1e400}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		s, err := load.Parse(in)
		if err != nil {
			return
		}
		b, err := json.Marshal(s)
		if err != nil {
			t.Fatal(err)
		}
		again, err := load.Parse(b)
		if err != nil || !reflect.DeepEqual(normal(again), normal(s)) {
			t.Fatalf("Parse(%q) = %+v; its encoding %s parses to %+v, %v", in, s, b, again, err)
		}
	})
}

// normal makes empty maps and slices nil: omitempty drops them, so they
// come back nil.
func normal(s load.Summary) load.Summary {
	if len(s.Codes) == 0 {
		s.Codes = nil
	}
	if len(s.Statuses) == 0 {
		s.Statuses = nil
	}
	if len(s.Errors) == 0 {
		s.Errors = nil
	}
	return s
}
