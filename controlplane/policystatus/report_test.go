package policystatus

import (
	"encoding/json"
	"fmt"
	"maps"
	"strings"
	"testing"
	"time"
)

func TestParseReport(t *testing.T) {
	big := `{"replica":"a","updated":"2026-11-24T10:00:00Z","policies":{"shop/web":{"1":1}},"pad":"` + strings.Repeat("x", MaxReportSize) + `"}`
	tests := []struct {
		name, in string
		want     *Report // nil: an error containing err
		err      string
	}{
		{"good", `{"replica":"ctl-0","updated":"2026-11-24T10:00:00Z","policies":{"shop/web":{"5":12,"4":1},"mesh-system/all":{"1":0}}}`,
			&Report{Replica: "ctl-0", Updated: time.Date(2026, 11, 24, 10, 0, 0, 0, time.UTC),
				Policies: map[string]map[int64]int32{"shop/web": {5: 12, 4: 1}, "mesh-system/all": {1: 0}}}, ""},
		{"no policies", `{"replica":"ctl-0","updated":"2026-11-24T10:00:00.5+01:00"}`,
			&Report{Replica: "ctl-0", Updated: time.Date(2026, 11, 24, 9, 0, 0, 5e8, time.UTC)}, ""},
		// A newer replica's extra field does not make its counts unreadable.
		{"unknown field", `{"replica":"b","updated":"2026-11-24T10:00:00Z","policies":{},"proxies":7}`,
			&Report{Replica: "b", Updated: time.Date(2026, 11, 24, 10, 0, 0, 0, time.UTC), Policies: map[string]map[int64]int32{}}, ""},
		{"empty", ``, nil, "policystatus: report: unexpected end of JSON input"},
		{"not an object", `[]`, nil, "policystatus: report: json: cannot unmarshal array"},
		{"no replica", `{"updated":"2026-11-24T10:00:00Z"}`, nil, "policystatus: report: no replica"},
		{"no time", `{"replica":"a"}`, nil, `policystatus: report of replica "a": no updated time`},
		{"bad time", `{"replica":"a","updated":"yesterday"}`, nil, `policystatus: report: parsing time "yesterday"`},
		{"no slash", `{"replica":"a","updated":"2026-11-24T10:00:00Z","policies":{"web":{"1":1}}}`, nil,
			`policystatus: report of replica "a": policy "web" is not namespace/name`},
		{"bad namespace", `{"replica":"a","updated":"2026-11-24T10:00:00Z","policies":{"Shop/web":{"1":1}}}`, nil,
			`policystatus: report of replica "a": policy "Shop/web": namespace: a lowercase RFC 1123 label`},
		{"two slashes", `{"replica":"a","updated":"2026-11-24T10:00:00Z","policies":{"shop/web/x":{"1":1}}}`, nil,
			`policystatus: report of replica "a": policy "shop/web/x": name: a lowercase RFC 1123 subdomain`},
		{"generation zero", `{"replica":"a","updated":"2026-11-24T10:00:00Z","policies":{"shop/web":{"0":1}}}`, nil,
			`policystatus: report of replica "a": policy "shop/web": generation 0, want at least 1`},
		{"negative generation", `{"replica":"a","updated":"2026-11-24T10:00:00Z","policies":{"shop/web":{"-3":1}}}`, nil,
			`generation -3, want at least 1`},
		{"generation not a number", `{"replica":"a","updated":"2026-11-24T10:00:00Z","policies":{"shop/web":{"five":1}}}`, nil,
			`policystatus: report: json: cannot unmarshal number five`},
		{"negative count", `{"replica":"a","updated":"2026-11-24T10:00:00Z","policies":{"shop/web":{"2":-1}}}`, nil,
			`policystatus: report of replica "a": policy "shop/web" generation 2: count -1 is negative`},
		{"count overflows", `{"replica":"a","updated":"2026-11-24T10:00:00Z","policies":{"shop/web":{"2":4294967296}}}`, nil,
			`policystatus: report: json: cannot unmarshal number 4294967296`},
		{"fractional count", `{"replica":"a","updated":"2026-11-24T10:00:00Z","policies":{"shop/web":{"2":1.5}}}`, nil,
			`policystatus: report: json: cannot unmarshal number 1.5`},
		{"oversized", big, nil, fmt.Sprintf("policystatus: report of %d bytes, more than 1048576", len(big))},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseReport([]byte(tt.in))
			if tt.want == nil {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("ParseReport = %+v, %v; want an error containing %q", got, err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got.Replica != tt.want.Replica || !got.Updated.Equal(tt.want.Updated) || !equalCounts(got.Policies, tt.want.Policies) {
				t.Errorf("ParseReport = %+v, want %+v", got, tt.want)
			}
		})
	}
}

// TestReportRoundTrip: what the Reporter writes, the Writer reads back
// unchanged, and the same counts always give the same bytes.
func TestReportRoundTrip(t *testing.T) {
	in := &Report{Replica: "ctl-1", Updated: time.Date(2026, 11, 24, 10, 0, 0, 123, time.UTC),
		Policies: map[string]map[int64]int32{"shop/web": {3: 2, 12: 1}, "mesh-system/base": {1: 40}}}
	b, err := in.encode()
	if err != nil {
		t.Fatal(err)
	}
	again, _ := in.encode()
	if string(b) != string(again) {
		t.Errorf("encoding is not stable:\n%s\n%s", b, again)
	}
	out, err := ParseReport(b)
	if err != nil {
		t.Fatal(err)
	}
	if out.Replica != in.Replica || !out.Updated.Equal(in.Updated) || !equalCounts(out.Policies, in.Policies) {
		t.Errorf("round trip: %+v, want %+v", out, in)
	}
}

// TestClean: counts the Writer would refuse are left out of a report, so
// one bad entry cannot make a replica's whole report unreadable.
func TestClean(t *testing.T) {
	in := map[string]map[int64]int32{
		"shop/web":      {1: 2, 2: 0, 0: 3, -1: 1, 3: -2},
		"shop/idle":     {1: 0},
		"no-slash":      {1: 1},
		"Shop/web":      {1: 1},
		"mesh-system/x": {7: 1},
	}
	want := map[string]map[int64]int32{"shop/web": {1: 2}, "mesh-system/x": {7: 1}}
	got := clean(in)
	if !equalCounts(got, want) {
		t.Errorf("clean = %v, want %v", got, want)
	}
	b, err := (&Report{Replica: "a", Updated: time.Now(), Policies: got}).encode()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ParseReport(b); err != nil {
		t.Errorf("a cleaned report is refused: %v", err)
	}
}

func TestFresh(t *testing.T) {
	now := time.Date(2026, 11, 24, 10, 0, 0, 0, time.UTC)
	const stale = 30 * time.Second
	tests := []struct {
		updated time.Time
		want    bool
	}{
		{now, true},
		{now.Add(-stale), true},
		{now.Add(-stale - time.Nanosecond), false},
		{now.Add(-time.Hour), false},
		{now.Add(5 * time.Second), true}, // a clock a little ahead
		{now.Add(stale + time.Nanosecond), false},
		{now.Add(24 * time.Hour), false}, // a clock far ahead never keeps a report alive
	}
	for _, tt := range tests {
		if got := (&Report{Updated: tt.updated}).fresh(now, stale); got != tt.want {
			t.Errorf("fresh at %s: %v, want %v", tt.updated.Sub(now), got, tt.want)
		}
	}
}

func TestChangedKeys(t *testing.T) {
	now := time.Date(2026, 11, 24, 10, 0, 0, 0, time.UTC)
	rep := func(age time.Duration, p map[string]map[int64]int32) *Report {
		return &Report{Replica: "a", Updated: now.Add(-age), Policies: p}
	}
	base := map[string]map[int64]int32{"shop/a": {1: 1}, "shop/b": {2: 3}}
	tests := []struct {
		name     string
		old, cur *Report
		want     []string
	}{
		{"new report", nil, rep(0, base), []string{"shop/a", "shop/b"}},
		{"deleted", rep(0, base), nil, []string{"shop/a", "shop/b"}},
		{"heartbeat, same counts", rep(5*time.Second, base), rep(0, base), nil},
		{"one count changed, one policy gone, one new", rep(0, base),
			rep(0, map[string]map[int64]int32{"shop/a": {1: 2}, "shop/c": {1: 1}}), []string{"shop/a", "shop/b", "shop/c"}},
		{"new generation", rep(0, base), rep(0, map[string]map[int64]int32{"shop/a": {1: 1}, "shop/b": {2: 3, 3: 1}}), []string{"shop/b"}},
		{"was stale, renewed", rep(time.Hour, base), rep(0, base), []string{"shop/a", "shop/b"}},
		{"stale, still stale", rep(time.Hour, base), rep(time.Minute, map[string]map[int64]int32{"shop/z": {1: 1}}), nil},
		{"deleted while stale", rep(time.Hour, base), nil, nil},
		{"unreadable, then readable", nil, rep(0, map[string]map[int64]int32{"shop/a": {1: 1}}), []string{"shop/a"}},
	}
	for _, tt := range tests {
		got := changedKeys(tt.old, tt.cur, now, 30*time.Second)
		want := map[string]bool{}
		for _, k := range tt.want {
			want[k] = true
		}
		if !maps.Equal(got, want) {
			t.Errorf("%s: %v, want %v", tt.name, got, want)
		}
	}
}

// FuzzParseReport: whatever a ConfigMap holds, ParseReport returns without
// panicking, and what it accepts satisfies its rules and survives a round
// trip through the Reporter's encoding.
func FuzzParseReport(f *testing.F) {
	for _, s := range []string{
		`{"replica":"ctl-0","updated":"2026-11-24T10:00:00Z","policies":{"shop/web":{"5":12,"4":1}}}`,
		`{"replica":"a","updated":"2026-11-24T10:00:00Z","policies":{"shop/web":{"-1":1}}}`,
		`{"replica":"a","updated":"2026-11-24T10:00:00Z","policies":{"shop/web":{"01":1,"1":2}}}`,
		`{"replica":"a","updated":"2026-11-24T10:00:00Z","policies":{"shop/web":null}}`,
		`{"replica":"a","updated":"2026-11-24T10:00:00Z","policies":{"shop/web":{"1":1}},"policies":{}}`,
		`{"replica":"\u0000","updated":"0001-01-01T00:00:00Z"}`,
		`{"replica":"a","updated":"9999-12-31T23:59:59Z","policies":{"a/b":{"9223372036854775807":2147483647}}}`,
		`null`, `{}`, `"x"`, `{"policies":{"a/b":{"1":1e3}}}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := ParseReport(b)
		if err != nil {
			if r != nil {
				t.Fatalf("a report and an error: %v", err)
			}
			if !strings.HasPrefix(err.Error(), "policystatus: ") {
				t.Fatalf("error without the package prefix: %v", err)
			}
			return
		}
		if r.Replica == "" || r.Updated.IsZero() {
			t.Fatalf("accepted without replica or time: %+v", r)
		}
		for k, gens := range r.Policies {
			if err := checkEntry(k, gens); err != nil {
				t.Fatalf("accepted a bad entry: %v", err)
			}
		}
		out, err := r.encode()
		if err != nil {
			// Only a time outside what RFC 3339 can write (years past
			// 9999 parse from offsets) fails to encode.
			var probe struct{ Updated time.Time }
			if json.Unmarshal(b, &probe) == nil && probe.Updated.Year() >= 0 && probe.Updated.Year() <= 9999 {
				t.Fatalf("cannot encode an accepted report: %v", err)
			}
			return
		}
		again, err := ParseReport(out)
		if err != nil {
			t.Fatalf("re-encoded report refused: %v\n%s", err, out)
		}
		if again.Replica != r.Replica || !again.Updated.Equal(r.Updated) || !equalCounts(again.Policies, r.Policies) {
			t.Fatalf("round trip changed the report: %+v then %+v", r, again)
		}
	})
}
