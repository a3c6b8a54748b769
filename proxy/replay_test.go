package proxy

import (
	"bytes"
	"context"
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
		{"read in part", "hello world", false, false, true},
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

// gate is an application body whose reads wait to be let through, one
// chunk at a time: a read of src can be under way when the next attempt
// starts.
type gate struct {
	body    []byte
	entered chan struct{} // a Read began
	release chan int      // how many bytes that Read returns
}

func (g *gate) Read(p []byte) (int, error) {
	g.entered <- struct{}{}
	n := min(<-g.release, len(p), len(g.body))
	copy(p, g.body[:n])
	g.body = g.body[n:]
	if len(g.body) == 0 {
		return n, io.EOF
	}
	return n, nil
}

func (g *gate) Close() error { return nil }

// serve lets every read through with up to n bytes, until ctx ends.
func (g *gate) serve(ctx context.Context, n int) {
	for {
		select {
		case <-g.entered:
			g.release <- n
		case <-ctx.Done():
			return
		}
	}
}

// TestReplayWhileAnEarlierReadIsUnderWay: the first attempt's body writer
// is inside the application body's Read when the next attempt starts. The
// next attempt waits for that read, gets its bytes from what is kept, and
// reads on: the whole body, in order, each byte once from the
// application; the first attempt's read ends as replaced.
func TestReplayWhileAnEarlierReadIsUnderWay(t *testing.T) {
	// Every offset's bytes differ, so a skipped or repeated stretch shows.
	body := make([]byte, 10000)
	for i := range body {
		body[i] = byte(i*7 + i/251)
	}
	g := &gate{body: append([]byte(nil), body...), entered: make(chan struct{}), release: make(chan int)}
	b := newReplayBody(g)
	first, err := b.next()
	if err != nil {
		t.Fatal(err)
	}
	// The first attempt reads 100 bytes, then is inside a second read.
	go func() { <-g.entered; g.release <- 100 }()
	if n, err := first.Read(make([]byte, 4096)); n != 100 || err != nil {
		t.Fatalf("first read: %d, %v", n, err)
	}
	firstDone := make(chan error, 1)
	go func() {
		_, err := first.Read(make([]byte, 4096))
		firstDone <- err
	}()
	<-g.entered // the first attempt's second read is under way
	var again io.ReadCloser
	if !b.take(&again) {
		t.Fatal("take refused a body read in part and kept whole")
	}
	got := make(chan []byte, 1)
	go func() {
		all, err := io.ReadAll(again)
		if err != nil {
			t.Errorf("the next attempt: %v", err)
		}
		got <- all
	}()
	// The next attempt must not read src while the first one does: let
	// the first one's read finish, then serve the rest.
	g.release <- 500
	if err := <-firstDone; !errors.Is(err, errReplaced) {
		t.Fatalf("the first attempt's read under way ended with %v, want errReplaced", err)
	}
	go g.serve(t.Context(), 3000)
	if all := <-got; !bytes.Equal(all, body) {
		t.Fatalf("the next attempt read %d bytes, not the body (%d bytes) in order", len(all), len(body))
	}
}

// TestReplayOverflowWhileReplaced: the read under way when the next
// attempt starts takes the body past maxReplay, so what the next attempt
// has not had is no longer kept: it fails rather than send a body with a
// hole, and a later attempt is refused.
func TestReplayOverflowWhileReplaced(t *testing.T) {
	body := []byte(strings.Repeat("x", maxReplay+2000))
	g := &gate{body: body, entered: make(chan struct{}), release: make(chan int)}
	b := newReplayBody(g)
	first, _ := b.next()
	go func() { <-g.entered; g.release <- maxReplay - 10 }()
	if _, err := io.ReadFull(first, make([]byte, maxReplay-10)); err != nil {
		t.Fatal(err)
	}
	firstDone := make(chan error, 1)
	go func() {
		_, err := first.Read(make([]byte, 4096))
		firstDone <- err
	}()
	<-g.entered
	var again io.ReadCloser
	if !b.take(&again) {
		t.Fatal("take refused a body still within maxReplay")
	}
	g.release <- 1000 // past maxReplay
	if err := <-firstDone; !errors.Is(err, errReplaced) {
		t.Fatalf("first attempt: %v, want errReplaced", err)
	}
	go g.serve(t.Context(), 4096) // a wrong reader reads on rather than hang
	if n, err := again.Read(make([]byte, 100)); n != 0 || !errors.Is(err, errNoReplay) {
		t.Fatalf("the next attempt read %d, %v; want 0, errNoReplay", n, err)
	}
	if _, err := b.next(); !errors.Is(err, errNoReplay) {
		t.Fatalf("a third attempt: %v, want errNoReplay", err)
	}
}

// TestReplayFirstAttemptPastTheLimit: one attempt reads a body larger
// than maxReplay whole, streamed from the application.
func TestReplayFirstAttemptPastTheLimit(t *testing.T) {
	body := strings.Repeat("y", 3*maxReplay+7)
	b := newReplayBody(io.NopCloser(strings.NewReader(body)))
	first, _ := b.next()
	got, err := io.ReadAll(first)
	if err != nil || string(got) != body {
		t.Fatalf("read %d bytes, %v; want the %d-byte body", len(got), err, len(body))
	}
}
