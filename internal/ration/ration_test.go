package ration_test

import (
	"testing"
	"testing/synctest"
	"time"

	"github.com/mesh-dev/mesh/internal/ration"
)

// TestRation: a burst goes through, the rest is counted, and the count
// rides on the next report allowed once the ration refills.
func TestRation(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r := ration.New(time.Second, 3)
		for i := range 3 {
			if ok, n := r.Allow(); !ok || n != 0 {
				t.Fatalf("report %d of the burst: %v, %d", i, ok, n)
			}
		}
		for range 5 {
			if ok, _ := r.Allow(); ok {
				t.Fatal("a report beyond the burst went through")
			}
		}
		time.Sleep(time.Second)
		if ok, n := r.Allow(); !ok || n != 5 {
			t.Fatalf("after a second: %v, %d; want true and 5 held back", ok, n)
		}
		if ok, _ := r.Allow(); ok {
			t.Fatal("the refill was more than one report")
		}
	})
}

// TestKeyed: one key's flood does not use up another's ration.
func TestKeyed(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		k := ration.NewKeyed(time.Second, 1)
		k.Allow("plaintext")
		for range 10 {
			k.Allow("plaintext")
		}
		if ok, n := k.Allow("loop"); !ok || n != 0 {
			t.Fatalf("another key: %v, %d", ok, n)
		}
		time.Sleep(time.Second)
		if ok, n := k.Allow("plaintext"); !ok || n != 10 {
			t.Fatalf("the flooded key after a second: %v, %d; want true and 10", ok, n)
		}
	})
}
