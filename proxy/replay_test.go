package proxy

import (
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"
)

func TestReplayBody(t *testing.T) {
	for _, tc := range []struct {
		name     string
		body     string
		readAll  bool // the first attempt read the whole body
		readNone bool // the first attempt read nothing
		replay   bool
	}{
		{"small, read whole", "hello", true, false, true},
		{"empty, read whole", "", true, false, true},
		{"at the limit", strings.Repeat("a", maxReplay), true, false, true},
		{"over the limit", strings.Repeat("a", maxReplay+1), true, false, false},
		{"read in part", "hello world", false, false, false},
		{"not read at all", "hello", false, true, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			src := io.NopCloser(strings.NewReader(tc.body))
			b := newReplayBody(src)
			first, err := b.next()
			if err != nil {
				t.Fatal(err)
			}
			switch {
			case tc.readAll:
				got, err := io.ReadAll(first)
				if err != nil || string(got) != tc.body {
					t.Fatalf("first attempt read %d bytes, %v", len(got), err)
				}
			case !tc.readNone:
				buf := make([]byte, 3)
				if _, err := io.ReadFull(first, buf); err != nil {
					t.Fatal(err)
				}
			}
			second, err := b.next()
			if !tc.replay {
				if !errors.Is(err, errNoReplay) {
					t.Fatalf("next = %v, want errNoReplay", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			got, err := io.ReadAll(second)
			if err != nil || !bytes.Equal(got, []byte(tc.body)) {
				t.Fatalf("second attempt read %d bytes (%v), want the whole body", len(got), err)
			}
			// The first attempt's reader is dead now.
			if n, err := first.Read(make([]byte, 1)); n != 0 || !errors.Is(err, errReplaced) {
				t.Fatalf("the first attempt's reader still reads: %d, %v", n, err)
			}
		})
	}
}
