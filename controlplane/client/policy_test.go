package client_test

import (
	"errors"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/prometheus/client_golang/prometheus"

	controlplanev1 "github.com/mesh-dev/mesh/controlplane/api/v1"
)

// events is an ordered log the policy callback and the controller's
// AckPolicy both write, so a test sees what happened in which order.
type events struct {
	mu   sync.Mutex
	list []string
}

func (e *events) add(s string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.list = append(e.list, s)
}

func (e *events) get() []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]string(nil), e.list...)
}

// nextAck is the next acknowledgement the controller received.
func nextAck(t *testing.T, srv *fakeCP) *controlplanev1.PolicyAck {
	t.Helper()
	select {
	case a := <-srv.acks:
		if a.GetNamespace() != namespace || a.GetPod() != podName {
			t.Fatalf("the ack names %s/%s, want %s/%s", a.GetNamespace(), a.GetPod(), namespace, podName)
		}
		return a
	case <-time.After(wait):
		t.Fatal("no acknowledgement")
		return nil
	}
}

// TestPolicyAcks: each policy goes to the callback, then is ACKed with its
// version, or NACKed with the callback's error; one at a time, in order,
// and never acknowledged before the callback returned.
func TestPolicyAcks(t *testing.T) {
	srv := newFakeCP()
	addr, _ := serve(t, srv)
	var log events
	srv.onAck = func(a *controlplanev1.PolicyAck) {
		if a.GetError() != "" {
			log.add("nack " + a.GetVersion())
		} else {
			log.add("ack " + a.GetVersion())
		}
	}
	entered, release := make(chan struct{}), make(chan struct{})
	long := strings.Repeat("é", 3000) + "\xff\xfe"
	refusals := map[string]error{
		"v2": errors.New(`authz: policy shop/api rule 3: unknown method "FROB"`),
		"v4": errors.New("authz: " + long),
	}
	reg := prometheus.NewRegistry()
	cfg := config(dial(t, addr))
	cfg.Registerer = reg
	cfg.Policy = func(p *controlplanev1.Policy) error {
		log.add("start " + p.GetVersion())
		defer log.add("end " + p.GetVersion())
		if p.GetDefaultMode() != "deny" || len(p.GetPolicies()) != 1 || string(p.GetPolicies()[0]) != `{"kind":"AuthorizationPolicy"}` {
			t.Errorf("the callback got %v, not the policy sent", p)
		}
		if p.GetVersion() == "v1" {
			close(entered)
			<-release
		}
		return refusals[p.GetVersion()]
	}
	c := start(t, cfg)
	st := next(t, srv.policies)
	policy := func(v string) *controlplanev1.Policy {
		return &controlplanev1.Policy{Version: v, DefaultMode: "deny", Policies: [][]byte{[]byte(`{"kind":"AuthorizationPolicy"}`)}}
	}

	// v1: no acknowledgement while the callback runs.
	st.push(t, policy("v1"))
	<-entered
	select {
	case a := <-srv.acks:
		t.Fatalf("acknowledged %v while the callback was still running", a)
	case <-time.After(100 * time.Millisecond):
	}
	if c.Ready() {
		t.Fatal("Ready before the callback accepted the policy")
	}
	close(release)
	if a := nextAck(t, srv); a.GetVersion() != "v1" || a.GetError() != "" {
		t.Fatalf("ack = %v, want an ACK of v1", a)
	}
	if !c.Ready() {
		t.Fatal("not Ready after the first policy was accepted")
	}

	// v2 (refused) and v3 sent back to back: handled in order.
	st.push(t, policy("v2"))
	st.push(t, policy("v3"))
	if a := nextAck(t, srv); a.GetVersion() != "v2" || a.GetError() != refusals["v2"].Error() {
		t.Fatalf("ack = %v, want a NACK of v2 with the callback's error", a)
	}
	if a := nextAck(t, srv); a.GetVersion() != "v3" || a.GetError() != "" {
		t.Fatalf("ack = %v, want an ACK of v3", a)
	}

	// A policy without a version is refused before the callback.
	st.push(t, policy(""))
	if a := nextAck(t, srv); a.GetVersion() != "" || !strings.Contains(a.GetError(), "no version") {
		t.Fatalf("ack = %v, want a NACK saying the policy has no version", a)
	}

	// A long error with invalid UTF-8 still goes out, bounded and valid.
	st.push(t, policy("v4"))
	a := nextAck(t, srv)
	if a.GetVersion() != "v4" || !strings.HasPrefix(a.GetError(), "authz: éé") || !utf8.ValidString(a.GetError()) || len(a.GetError()) > 1100 {
		t.Fatalf("ack = version %q, %d bytes of error (valid UTF-8: %v); want a NACK of v4, bounded, valid, starting with the error", a.GetVersion(), len(a.GetError()), utf8.ValidString(a.GetError()))
	}

	want := []string{
		"start v1", "end v1", "ack v1",
		"start v2", "end v2", "nack v2",
		"start v3", "end v3", "ack v3",
		"nack ",
		"start v4", "end v4", "nack v4",
	}
	if got := log.get(); strings.Join(got, "|") != strings.Join(want, "|") {
		t.Fatalf("events:\n got %q\nwant %q", got, want)
	}
	if got := metric(t, reg, "mesh_proxy_control_policy_nacks_total"); got != 3 {
		t.Fatalf("nacks = %v, want 3", got)
	}
	if !c.Ready() {
		t.Fatal("a NACK after an accepted policy made the client not Ready")
	}
}

// TestPolicyAckLost: an acknowledgement that fails ends the stream; the
// new stream's policy is applied and acknowledged again, so the
// controller learns what the proxy enforces.
func TestPolicyAckLost(t *testing.T) {
	srv := newFakeCP()
	addr, _ := serve(t, srv)
	srv.failAcks.Store(1)
	var mu sync.Mutex
	var applied []string
	cfg := config(dial(t, addr))
	cfg.Policy = func(p *controlplanev1.Policy) error {
		mu.Lock()
		defer mu.Unlock()
		applied = append(applied, p.GetVersion())
		return nil
	}
	start(t, cfg)
	next(t, srv.policies).push(t, &controlplanev1.Policy{Version: "v1"})
	st2 := next(t, srv.policies)
	st2.push(t, &controlplanev1.Policy{Version: "v1"})
	if a := nextAck(t, srv); a.GetVersion() != "v1" || a.GetError() != "" {
		t.Fatalf("ack = %v, want an ACK of v1 on the new stream", a)
	}
	mu.Lock()
	defer mu.Unlock()
	if strings.Join(applied, ",") != "v1,v1" {
		t.Fatalf("the callback saw %v, want v1 from each stream", applied)
	}
}

// TestPolicyFirstNack: a first policy the callback refuses leaves the
// client not Ready: the proxy enforces nothing from the controller yet.
func TestPolicyFirstNack(t *testing.T) {
	srv := newFakeCP()
	addr, _ := serve(t, srv)
	cfg := config(dial(t, addr))
	cfg.Policy = func(p *controlplanev1.Policy) error {
		if p.GetVersion() == "bad" {
			return errors.New("authz: bad")
		}
		return nil
	}
	c := start(t, cfg)
	st := next(t, srv.policies)
	st.push(t, &controlplanev1.Policy{Version: "bad"})
	if a := nextAck(t, srv); a.GetError() != "authz: bad" {
		t.Fatalf("ack = %v, want a NACK", a)
	}
	if c.Ready() {
		t.Fatal("Ready after the only policy was refused")
	}
	st.push(t, &controlplanev1.Policy{Version: "good"})
	if a := nextAck(t, srv); a.GetVersion() != "good" || a.GetError() != "" {
		t.Fatalf("ack = %v, want an ACK of good", a)
	}
	if !c.Ready() {
		t.Fatal("not Ready after a policy was accepted")
	}
}
