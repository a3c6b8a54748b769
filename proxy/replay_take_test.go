package proxy

import (
	"errors"
	"io"
	"strings"
	"testing"
)

// TestReplayTake: deciding to try again and taking the next reader are one
// step. Once take succeeded, the earlier attempt's reader cannot start
// reading (it is replaced), so the new attempt gets the body whole, also
// when the earlier reader began it and did not finish.
func TestReplayTake(t *testing.T) {
	for _, tc := range []struct {
		name      string
		size      int
		firstRead int // bytes the first attempt read before take; -1: all
		want      bool
	}{
		{"nothing read yet", 10 << 10, 0, true},
		{"read whole", 10 << 10, -1, true},
		{"read in part", 10 << 10, 100, true},
		{"read past what is kept", maxReplay + 1000, maxReplay + 1, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			body := strings.Repeat("b", tc.size)
			b := newReplayBody(io.NopCloser(strings.NewReader(body)))
			first, err := b.next()
			if err != nil {
				t.Fatal(err)
			}
			switch {
			case tc.firstRead < 0:
				if _, err := io.ReadAll(first); err != nil {
					t.Fatal(err)
				}
			case tc.firstRead > 0:
				if _, err := io.ReadFull(first, make([]byte, tc.firstRead)); err != nil {
					t.Fatal(err)
				}
			}
			var again io.ReadCloser
			if got := b.take(&again); got != tc.want {
				t.Fatalf("take = %v, want %v", got, tc.want)
			}
			if !tc.want {
				if again != nil {
					t.Fatal("take refused but gave a reader")
				}
				return
			}
			// The first attempt's writer starting only now reads nothing.
			if n, err := first.Read(make([]byte, 10)); n != 0 || !errors.Is(err, errReplaced) {
				t.Fatalf("first attempt read %d, %v after take; want 0, errReplaced", n, err)
			}
			got, err := io.ReadAll(again)
			if err != nil || string(got) != body {
				t.Fatalf("the next attempt read %d bytes, %v; want the whole %d-byte body", len(got), err, len(body))
			}
		})
	}
}
