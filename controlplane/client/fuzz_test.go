package client

import (
	"crypto/x509"
	"net/netip"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/protobuf/proto"

	controlplanev1 "github.com/mesh-dev/mesh/controlplane/api/v1"
	"github.com/mesh-dev/mesh/internal/testpki"
)

var fuzzTD = spiffeid.RequireTrustDomainFromString("cluster.local")

func marshal(f *testing.F, m *controlplanev1.Destinations) []byte {
	b, err := proto.Marshal(m)
	if err != nil {
		f.Fatal(err)
	}
	return b
}

// FuzzApply feeds the table two controller messages, as received on the
// wire: the first as a snapshot, the second as whatever it says. Whatever
// they hold, applying them must not panic, must leave the first table
// untouched, and must keep the safety invariants: every meshed answer
// carries an identity of the trust domain, no key is in a non-canonical
// form, and a meshed pod the messages leave in place never answers "not
// meshed".
func FuzzApply(f *testing.F) {
	web := "spiffe://cluster.local/ns/shop/sa/web"
	pod := func(a string, meshed bool, id string) *controlplanev1.Destination {
		return &controlplanev1.Destination{Address: a, Kind: controlplanev1.Destination_POD, Meshed: meshed, Identity: id}
	}
	svc := func(a string, eps ...*controlplanev1.Endpoint) *controlplanev1.Destination {
		return &controlplanev1.Destination{Address: a, Kind: controlplanev1.Destination_SERVICE, Endpoints: eps}
	}
	snap := marshal(f, &controlplanev1.Destinations{Snapshot: true, Upserts: []*controlplanev1.Destination{
		pod("198.18.0.1", true, web), pod("198.18.0.2", false, ""), pod("::ffff:198.18.0.3", true, web),
		svc("198.18.1.1:80", &controlplanev1.Endpoint{Address: "198.18.0.1:8080", Meshed: true, Identity: web}, &controlplanev1.Endpoint{Address: "x", Meshed: true}),
		pod("198.18.0.4", true, "spiffe://evil.example/ns/a/sa/b"), pod("fe80::1%eth0", true, web), pod("198.18.0.5:0", true, web),
		{Address: "198.18.0.6", Kind: controlplanev1.Destination_SERVICE, Meshed: true},
		{Address: "198.18.0.7", Kind: 42, Meshed: true, Identity: web},
	}})
	delta := marshal(f, &controlplanev1.Destinations{
		Upserts: []*controlplanev1.Destination{pod("198.18.0.2", true, web), pod("198.18.0.1", true, "")},
		Removes: []string{"198.18.0.3", "198.18.1.1:80", "garbage", "[::ffff:198.18.0.1]:80"},
	})
	f.Add(snap, delta)
	f.Add(snap, snap)
	f.Add([]byte{}, []byte{})
	f.Add(delta, []byte{0xff, 0x01})
	f.Add(marshal(f, &controlplanev1.Destinations{Upserts: []*controlplanev1.Destination{pod(strings.Repeat("1", 300), true, strings.Repeat("\x00", 300))}}), delta)

	f.Fuzz(func(t *testing.T, first, second []byte) {
		var m1, m2 controlplanev1.Destinations
		if proto.Unmarshal(first, &m1) != nil {
			return
		}
		m1.Snapshot = true
		t1, rej1 := newTable().apply(&m1, fuzzTD)
		checkTable(t, t1, rej1, &m1)
		services, pods := len(t1.services), len(t1.pods)
		if proto.Unmarshal(second, &m2) != nil {
			return
		}
		t2, rej2 := t1.apply(&m2, fuzzTD)
		checkTable(t, t2, rej2, &m2)
		if len(t1.services) != services || len(t1.pods) != pods {
			t.Fatal("applying a message changed the table it was applied to")
		}
	})
}

func checkTable(t *testing.T, tb *table, rej []rejection, msg *controlplanev1.Destinations) {
	t.Helper()
	if !tb.synced {
		t.Fatal("an applied table is not synced")
	}
	for _, r := range rej {
		if r.reason == "" || len(r.detail) > 2048 {
			t.Fatalf("rejection %+v: no reason, or unbounded detail", r)
		}
	}
	checkEntry := func(key string, e entry) {
		d := e.dest
		if e.err != nil && (d.Meshed || d.Service) {
			t.Fatalf("%s: an error with an answer: %+v", key, d)
		}
		if d.Meshed && !d.Identity.MemberOf(fuzzTD) {
			t.Fatalf("%s: meshed with identity %q outside the trust domain", key, d.Identity)
		}
		for _, ep := range d.Endpoints {
			if ep.Meshed && !ep.Identity.MemberOf(fuzzTD) {
				t.Fatalf("%s: endpoint %s meshed with identity %q", key, ep.Addr, ep.Identity)
			}
			if !ep.Addr.IsValid() || ep.Addr.Port() == 0 || ep.Addr.Addr().Is4In6() || ep.Addr.Addr().Zone() != "" {
				t.Fatalf("%s: endpoint address %s is not canonical", key, ep.Addr)
			}
		}
	}
	for k, e := range tb.services {
		if k.Port() == 0 || k.Addr().Is4In6() || k.Addr().Zone() != "" {
			t.Fatalf("service key %s is not canonical", k)
		}
		if e.err == nil && !e.dest.Service {
			t.Fatalf("service key %s answers a non-Service %+v", k, e.dest)
		}
		checkEntry(k.String(), e)
	}
	for k, e := range tb.pods {
		if k.Is4In6() || k.Zone() != "" {
			t.Fatalf("pod key %s is not canonical", k)
		}
		if e.dest.Service || e.dest.Endpoints != nil {
			t.Fatalf("pod key %s answers a Service", k)
		}
		checkEntry(k.String(), e)
	}
	// A meshed pod upserted last and not removed answers meshed or an
	// error, on a port no Service entry shadows.
	removed := map[netip.Addr]bool{}
	for _, r := range msg.GetRemoves() {
		if a, err := netip.ParseAddr(r); err == nil {
			removed[a.Unmap().WithZone("")] = true
		}
	}
	last := map[netip.Addr]*controlplanev1.Destination{}
	for _, d := range msg.GetUpserts() {
		if a, err := netip.ParseAddr(d.GetAddress()); err == nil && a.Zone() == "" {
			last[a.Unmap()] = d
		}
	}
	for a, d := range last {
		if removed[a] || !d.GetMeshed() {
			continue
		}
		for port := uint16(1); port < 100; port++ {
			ap := netip.AddrPortFrom(a, port)
			if _, shadowed := tb.services[ap]; shadowed {
				continue
			}
			got, err := tb.lookup(ap)
			if err == nil && !got.Meshed {
				t.Fatalf("meshed pod %s (kind %s, identity %q) answers not meshed", ap, d.GetKind(), d.GetIdentity())
			}
			break
		}
	}
}

// FuzzParseRoots: a bundle is accepted only whole, every root a parsed CA
// certificate, and refused with a reason otherwise.
func FuzzParseRoots(f *testing.F) {
	p := testpki.New(f, "cluster.local")
	root := p.CA.Bundle()[0].Raw
	leaf := p.SVID(f, "spiffe://cluster.local/ns/shop/sa/web").Certificates[0].Raw
	f.Add(root, root)
	f.Add(root, leaf)
	f.Add(root, []byte{})
	f.Add([]byte("junk"), root)
	f.Add(append(append([]byte{}, root...), 0), root)
	f.Add(root[:len(root)/2], root)
	f.Fuzz(func(t *testing.T, a, b []byte) {
		roots, reason, err := parseRoots([][]byte{a, b})
		if err != nil {
			if roots != nil || reason == "" {
				t.Fatalf("refused (%v) with roots %v and reason %q", err, roots, reason)
			}
			if !strings.HasPrefix(err.Error(), "client: ") {
				t.Fatalf("error %q lacks the package prefix", err)
			}
			return
		}
		if len(roots) != 2 {
			t.Fatalf("accepted %d roots of 2", len(roots))
		}
		for i, c := range roots {
			if !c.IsCA || !c.BasicConstraintsValid {
				t.Fatalf("accepted root %d that is not a CA", i)
			}
			if _, err := x509.ParseCertificate([][]byte{a, b}[i]); err != nil {
				t.Fatalf("accepted root %d that does not parse: %v", i, err)
			}
		}
	})
}

// TestAckError: a NACK's text is valid UTF-8 and bounded, cut on a rune
// boundary, whatever the callback's error says.
func TestAckError(t *testing.T) {
	for _, tc := range []struct {
		name, in string
		want     string // "" when only the invariants are checked
	}{
		{"short", "authz: bad rule", "authz: bad rule"},
		{"invalid UTF-8", "authz: \xff\xfe", "authz: \uFFFD"},
		{"long ASCII", strings.Repeat("a", 5000), strings.Repeat("a", maxAckError) + "…"},
		{"long, multi-byte across the cut", "a" + strings.Repeat("€", 2000), ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := ackError(errString(tc.in))
			if !utf8.ValidString(got) || len(got) > maxAckError+len("…") {
				t.Fatalf("ackError: %d bytes, valid %v", len(got), utf8.ValidString(got))
			}
			if tc.want != "" && got != tc.want {
				t.Fatalf("ackError = %q, want %q", got, tc.want)
			}
			if !strings.HasPrefix(tc.in, strings.TrimSuffix(got, "…")) && tc.want == "" {
				t.Fatalf("ackError = %q is not a prefix of the error", got)
			}
		})
	}
}

type errString string

func (e errString) Error() string { return string(e) }
