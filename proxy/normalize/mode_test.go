package normalize_test

import (
	"flag"
	"testing"

	"github.com/mesh-dev/mesh/proxy/normalize"
)

func TestParseMode(t *testing.T) {
	tests := []struct {
		in   string
		want normalize.Mode
		err  string
	}{
		{"NONE", normalize.None, ""},
		{"BASE", normalize.Base, ""},
		{"MERGE_SLASHES", normalize.MergeSlashes, ""},
		{"merge_slashes", normalize.MergeSlashes, ""},
		{"Decode_And_Merge_Slashes", normalize.DecodeAndMergeSlashes, ""},
		{"", 0, `normalize: path normalization mode "" is not one of NONE, BASE, MERGE_SLASHES, DECODE_AND_MERGE_SLASHES`},
		{"merge-slashes", 0, `normalize: path normalization mode "merge-slashes" is not one of NONE, BASE, MERGE_SLASHES, DECODE_AND_MERGE_SLASHES`},
		{"MERGE_SLASHES ", 0, `normalize: path normalization mode "MERGE_SLASHES " is not one of NONE, BASE, MERGE_SLASHES, DECODE_AND_MERGE_SLASHES`},
	}
	for _, tt := range tests {
		got, err := normalize.ParseMode(tt.in)
		gotErr := ""
		if err != nil {
			gotErr = err.Error()
		}
		if got != tt.want || gotErr != tt.err {
			t.Errorf("ParseMode(%q) = %v, %q; want %v, %q", tt.in, got, gotErr, tt.want, tt.err)
		}
	}
	for _, m := range modes {
		back, err := normalize.ParseMode(m.String())
		if err != nil || back != m {
			t.Errorf("ParseMode(%v.String()) = %v, %v", m, back, err)
		}
	}
	if normalize.DefaultMode != normalize.MergeSlashes || normalize.DefaultMode.String() != "MERGE_SLASHES" {
		t.Errorf("DefaultMode = %v; the documentation promises MERGE_SLASHES", normalize.DefaultMode)
	}
	if s := normalize.Mode(0).String(); s != "Mode(0)" {
		t.Errorf("Mode(0).String() = %q", s)
	}
}

func TestParseUnderscoreAction(t *testing.T) {
	tests := []struct {
		in   string
		want normalize.UnderscoreAction
		err  string
	}{
		{"reject", normalize.Reject, ""},
		{"DROP", normalize.Drop, ""},
		{"Allow", normalize.Allow, ""},
		{"", 0, `normalize: underscore header action "" is not one of reject, drop, allow`},
		{"REJECT_REQUEST", 0, `normalize: underscore header action "REJECT_REQUEST" is not one of reject, drop, allow`},
	}
	for _, tt := range tests {
		got, err := normalize.ParseUnderscoreAction(tt.in)
		gotErr := ""
		if err != nil {
			gotErr = err.Error()
		}
		if got != tt.want || gotErr != tt.err {
			t.Errorf("ParseUnderscoreAction(%q) = %v, %q; want %v, %q", tt.in, got, gotErr, tt.want, tt.err)
		}
	}
	if normalize.DefaultUnderscoreAction != normalize.Reject {
		t.Errorf("DefaultUnderscoreAction = %v; the documentation promises reject", normalize.DefaultUnderscoreAction)
	}
}

// TestFlags: both types work as flag.TextVar values, defaults included.
func TestFlags(t *testing.T) {
	fs := flag.NewFlagSet("proxy", flag.ContinueOnError)
	var m normalize.Mode
	var a normalize.UnderscoreAction
	fs.TextVar(&m, "path-normalization", normalize.DefaultMode, "")
	fs.TextVar(&a, "headers-with-underscores", normalize.DefaultUnderscoreAction, "")
	if m != normalize.MergeSlashes || a != normalize.Reject {
		t.Fatalf("defaults: %v, %v", m, a)
	}
	if err := fs.Parse([]string{"--path-normalization=base", "--headers-with-underscores=drop"}); err != nil {
		t.Fatal(err)
	}
	if m != normalize.Base || a != normalize.Drop {
		t.Fatalf("parsed: %v, %v", m, a)
	}
	fs.SetOutput(discard{})
	if err := fs.Parse([]string{"--path-normalization=slashes"}); err == nil {
		t.Fatal("an unknown mode was accepted")
	}
	if _, err := normalize.Mode(0).MarshalText(); err == nil {
		t.Error("the zero Mode marshals")
	}
	if _, err := normalize.UnderscoreAction(9).MarshalText(); err == nil {
		t.Error("an invalid UnderscoreAction marshals")
	}
}

type discard struct{}

func (discard) Write(p []byte) (int, error) { return len(p), nil }
