package meshproxy

import (
	"net/netip"
	"testing"

	"github.com/mesh-dev/mesh/proxy"
)

// FuzzStandaloneConfig: no configuration makes the parser panic, and one
// it accepts keeps the invariants the proxy relies on.
func FuzzStandaloneConfig(f *testing.F) {
	id := "identity: {cert: c.pem, key: k.pem, bundle: b.pem}\n"
	for _, seed := range []string{
		"trustDomain: example.org\n" + id + "inbound: {listen: \"127.0.0.1:8443\", forward: \"127.0.0.1:8080\", protocol: http}\n",
		"trustDomain: example.org\n" + id + "outbound: [{listen: \"127.0.0.1:9001\", destination: \"198.18.0.20:8443\", peer: \"spiffe://example.org/ns/shop/sa/api\", protocol: opaque}]\nadmin: \"127.0.0.1:15020\"\n",
		"trustDomain: example.org\n" + id + "inbound: {listen: \":8443\", forward: \"[::1]:8080\"}\noutbound:\n- {listen: \"[::ffff:127.0.0.1]:9001\", destination: \"[::ffff:198.18.0.20]:8443\", peer: \"spiffe://example.org/a\"}\n",
		"trustDomain: example.org\n" + id + "inbound: {listen: \"127.0.0.1:8443\", forward: \"127.0.0.1:8443\"}\n",
		"trustDomain: example.org\n" + id + "outbound: [{listen: x, peer: [1]}]\n",
		"outbound: {a: {b: [c, {d: e}]}}\n",
		"[1, 2]\n",
		"",
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		s, err := parseStandalone(b, t.TempDir())
		if err != nil {
			return
		}
		seen := map[netip.AddrPort]bool{}
		for _, o := range s.outbound {
			if o.destination.Port() == 0 || !o.destination.IsValid() || o.destination.Addr().Is4In6() {
				t.Fatalf("accepted destination %v", o.destination)
			}
			if !o.peer.MemberOf(s.td) {
				t.Fatalf("accepted peer %s outside %s", o.peer, s.td)
			}
			want, ok := s.destinations[o.destination]
			if !ok || !want.Meshed || want.Identity != o.peer {
				t.Fatalf("destination %s not in the table as meshed %s: %+v", o.destination, o.peer, want)
			}
			if want.Protocol != "" {
				if _, err := proxy.ParseAppProtocol(string(want.Protocol)); err != nil {
					t.Fatalf("destination %s accepted with protocol %q", o.destination, want.Protocol)
				}
			}
			if seen[o.destination] && s.destinations[o.destination].Identity != o.peer {
				t.Fatalf("destination %s with two peers", o.destination)
			}
			seen[o.destination] = true
		}
		if s.inbound == nil && len(s.outbound) == 0 {
			t.Fatal("accepted a proxy with nothing to do")
		}
		if s.inbound != nil && s.table == nil {
			t.Fatal("inbound without a policy table")
		}
	})
}
