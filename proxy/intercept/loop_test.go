package intercept_test

import (
	"fmt"
	"strings"
	"testing"
)

// TestNoRedirectLoop is finding 6: a connection to podIP:15001 or
// podIP:15006 was redirected to the inbound port, and the proxy dialled
// the same address again, in a loop. Now, in both families, it lands on the
// listener it was addressed to, unredirected (its original destination is
// that listener's own address, which is how the proxy recognises and
// refuses it), and no REDIRECT rule matched it.
func TestNoRedirectLoop(t *testing.T) {
	p := newPods(t, 250)
	if _, err := apply(p.b, podConfig()); err != nil {
		t.Fatalf("init: %v", err)
	}
	listeners := map[int]*standIn{
		inPort:  newStandIn(t, p.b, "inbound", inPort),
		outPort: newStandIn(t, p.b, "outbound", outPort),
	}
	tests := []struct {
		family     string
		port       int
		lands      int  // the listener the connection must reach
		redirected bool // whether the nat REDIRECT must match it
	}{
		// Controls: a port of the app's is redirected, so the counters and
		// listeners below would show a redirect if there were one.
		{"4", appPort, inPort, true},
		{"6", appPort, inPort, true},
		{"4", outPort, outPort, false},
		{"4", inPort, inPort, false},
		{"6", outPort, outPort, false},
		{"6", inPort, inPort, false},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("IPv%s port %d", tt.family, tt.port), func(t *testing.T) {
			saveBin := map[string]string{"4": "iptables-save", "6": "ip6tables-save"}[tt.family]
			redirect := fmt.Sprintf("-A MESH_INBOUND -p tcp -j REDIRECT --to-ports %d", inPort)
			before, _ := counters(t, p.b, saveBin, "MESH_INBOUND")
			if _, ok := before[redirect]; !ok {
				t.Fatalf("no rule %q in %v", redirect, before)
			}

			addr := p.addrB(tt.family, tt.port)
			got, err := dial(p.a, addr)
			want := listeners[tt.lands].name
			if err != nil || got != want {
				t.Fatalf("dial %s = %q, %v; want the %s listener", addr, got, err, want)
			}
			l := <-listeners[tt.lands].lands
			if l.err != nil || l.orig != p.origB(tt.family, tt.port) {
				t.Fatalf("dial %s: original destination %v (%v), want %v", addr, l.orig, l.err, p.origB(tt.family, tt.port))
			}

			after, _ := counters(t, p.b, saveBin, "MESH_INBOUND")
			if n := after[redirect] - before[redirect]; (n > 0) != tt.redirected {
				t.Fatalf("dial %s: REDIRECT matched %d packets, want redirected=%v", addr, n, tt.redirected)
			}
			if !tt.redirected {
				ret := fmt.Sprintf("-A MESH_INBOUND -p tcp -m tcp --dport %d -j RETURN", tt.port)
				if after[ret]-before[ret] != 1 {
					t.Fatalf("dial %s: %q matched %d packets, want 1", addr, ret, after[ret]-before[ret])
				}
			}
		})
	}

	// Statically too: in both families, the first MESH_INBOUND rule that
	// can match a proxy port returns; nothing before it redirects.
	for _, saveBin := range []string{"iptables-save", "ip6tables-save"} {
		_, order := counters(t, p.b, saveBin, "MESH_INBOUND")
		for _, port := range []int{inPort, outPort} {
			first := ""
			for _, r := range order {
				if strings.Contains(r, "--dport ") && !strings.Contains(r, fmt.Sprintf("--dport %d ", port)) {
					continue // for another port
				}
				first = r
				break
			}
			if !strings.HasSuffix(first, "-j RETURN") {
				t.Errorf("%s: the first rule for port %d is %q, want a RETURN:\n%s", saveBin, port, first, strings.Join(order, "\n"))
			}
		}
	}
}
