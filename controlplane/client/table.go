package client

import (
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	controlplanev1 "github.com/mesh-dev/mesh/controlplane/api/v1"
	"github.com/mesh-dev/mesh/proxy"
)

// table is one immutable view of the mesh's destinations. Once published
// it is never modified: every change builds a new table, so Lookup reads
// it without a lock.
type table struct {
	// synced: a snapshot has been applied. Only the empty table the
	// client starts with is not synced.
	synced   bool
	services map[netip.AddrPort]entry // Service ports, "clusterIP:port"
	pods     map[netip.Addr]entry     // pods, "ip", any port
	// updated is closed when a newer table replaces this one.
	updated chan struct{}
}

// entry is Lookup's answer for one address, computed when the message
// arrived so a hit costs a map read and nothing else.
type entry struct {
	dest Destination
	// err, when set, refuses the address: the controller said it is
	// meshed (or said something inconsistent) without an identity the
	// proxy could require.
	err error
}

// rejection is one part of a controller message that was not applied as
// sent, for the log and the rejected metric.
type rejection struct {
	reason, address, detail string
}

func newTable() *table { return &table{updated: make(chan struct{})} }

// lookup answers for addr: a Service port first, then the pod at the
// address, then "not meshed".
func (t *table) lookup(addr netip.AddrPort) (Destination, error) {
	ip := canonical(addr.Addr())
	if e, ok := t.services[netip.AddrPortFrom(ip, addr.Port())]; ok {
		return e.dest, e.err
	}
	if e, ok := t.pods[ip]; ok {
		return e.dest, e.err
	}
	return Destination{}, nil
}

// apply returns the table msg makes of t: a snapshot replaces everything,
// any other message applies its upserts and then its removes. The caller
// applies a non-snapshot message only to a synced table.
func (t *table) apply(msg *controlplanev1.Destinations, td spiffeid.TrustDomain) (*table, []rejection) {
	nt := &table{synced: true, updated: make(chan struct{})}
	if msg.GetSnapshot() {
		nt.services = make(map[netip.AddrPort]entry)
		nt.pods = make(map[netip.Addr]entry, len(msg.GetUpserts()))
	} else {
		nt.services, nt.pods = maps.Clone(t.services), maps.Clone(t.pods)
		if nt.services == nil {
			nt.services = make(map[netip.AddrPort]entry)
		}
		if nt.pods == nil {
			nt.pods = make(map[netip.Addr]entry)
		}
	}
	var rej []rejection
	for _, d := range msg.GetUpserts() {
		rej = nt.upsert(d, td, rej)
	}
	for _, a := range msg.GetRemoves() {
		svc, pod, isService, err := parseKey(a)
		switch {
		case err != nil:
			rej = append(rej, rejection{reasonBadAddress, a, "remove: " + err.Error()})
		case isService:
			delete(nt.services, svc)
		default:
			delete(nt.pods, pod)
		}
	}
	return nt, rej
}

// upsert records d, appending to rej what of it was refused.
func (t *table) upsert(d *controlplanev1.Destination, td spiffeid.TrustDomain, rej []rejection) []rejection {
	a := d.GetAddress()
	svc, pod, isService, err := parseKey(a)
	if err != nil {
		// Nothing can be recorded for an address that does not parse,
		// and no connection can be made to it either.
		return append(rej, rejection{reasonBadAddress, a, err.Error()})
	}
	kind := d.GetKind()
	switch {
	case isService && kind == controlplanev1.Destination_SERVICE:
		var eps []Endpoint
		if n := len(d.GetEndpoints()); n > 0 {
			eps = make([]Endpoint, 0, n)
		}
		for _, ep := range d.GetEndpoints() {
			eps, rej = appendEndpoint(eps, rej, ep, td)
		}
		dest := Destination{
			Service: true, Endpoints: eps,
			RequestTimeout: time.Duration(d.GetRequestTimeoutMs()) * time.Millisecond,
			ConnectTimeout: time.Duration(d.GetConnectTimeoutMs()) * time.Millisecond,
		}
		if d.GetName() != "" {
			dest.Name = d.GetNamespace() + "/" + d.GetName()
		}
		if p, err := proxy.ParseAppProtocol(d.GetProtocol()); err == nil {
			dest.Protocol = p
		} else if d.GetProtocol() != "" {
			// An unknown declaration is detected instead, never trusted:
			// detection still refuses nothing HTTP policies need.
			rej = append(rej, rejection{reasonBadProtocol, a, err.Error()})
		}
		t.services[svc] = entry{dest: dest}
		return rej
	case !isService && kind == controlplanev1.Destination_POD:
		e, ok := podEntry(a, d, td)
		if !ok {
			rej = append(rej, rejection{reasonBadIdentity, a, e.err.Error()})
		}
		t.pods[pod] = e
		return rej
	}
	// The kind and the address's form disagree, or the kind is unknown:
	// refuse the address rather than guess which the controller meant,
	// since one of the guesses dials a meshed pod in plaintext.
	err = fmt.Errorf("client: the controller described %s as kind %s, which an address of this form cannot be: %w", a, kind, ErrBadDestination)
	rej = append(rej, rejection{reasonBadKind, a, err.Error()})
	if isService {
		t.services[svc] = entry{err: err}
	} else {
		t.pods[pod] = entry{err: err}
	}
	return rej
}

// podEntry is a pod's answer: not meshed, or meshed with the identity to
// require. A meshed pod without an acceptable identity is refused, never
// taken for an unmeshed one.
func podEntry(addr string, d *controlplanev1.Destination, td spiffeid.TrustDomain) (entry, bool) {
	if !d.GetMeshed() {
		return entry{}, true
	}
	id, err := parseIdentity(d.GetIdentity(), td)
	if err != nil {
		return entry{err: fmt.Errorf("client: %s is a meshed pod without an acceptable identity: %w (%w)", addr, err, ErrBadDestination)}, false
	}
	dest := Destination{Meshed: true, Identity: id}
	for _, p := range d.GetOpaquePorts() {
		if p > 0 && p <= 65535 {
			dest.OpaquePorts = append(dest.OpaquePorts, uint16(p))
		}
	}
	return entry{dest: dest}, true
}

// appendEndpoint appends ep to eps when it can be dialled safely: an
// address that parses, and for a meshed pod an acceptable identity. A
// refused endpoint is left out, so the proxy never picks it.
func appendEndpoint(eps []Endpoint, rej []rejection, ep *controlplanev1.Endpoint, td spiffeid.TrustDomain) ([]Endpoint, []rejection) {
	addr, err := parseAddrPort(ep.GetAddress())
	if err != nil {
		return eps, append(rej, rejection{reasonBadAddress, ep.GetAddress(), "endpoint: " + err.Error()})
	}
	e := Endpoint{Addr: addr}
	if ep.GetMeshed() {
		id, err := parseIdentity(ep.GetIdentity(), td)
		if err != nil {
			return eps, append(rej, rejection{reasonBadIdentity, ep.GetAddress(), "endpoint: " + err.Error()})
		}
		e.Meshed, e.Identity = true, id
	}
	return append(eps, e), rej
}

// parseKey parses a destination address: "ip:port" is a Service port,
// "ip" a pod.
func parseKey(s string) (svc netip.AddrPort, pod netip.Addr, isService bool, err error) {
	if ap, perr := netip.ParseAddrPort(s); perr == nil {
		svc, err = checkAddrPort(ap)
		return svc, netip.Addr{}, true, err
	}
	a, perr := netip.ParseAddr(s)
	if perr != nil {
		return netip.AddrPort{}, netip.Addr{}, false, fmt.Errorf("client: destination address %q is neither ip nor ip:port", clip(s))
	}
	if a.Zone() != "" {
		return netip.AddrPort{}, netip.Addr{}, false, fmt.Errorf("client: destination address %q has a zone", clip(s))
	}
	return netip.AddrPort{}, canonical(a), false, nil
}

func parseAddrPort(s string) (netip.AddrPort, error) {
	ap, err := netip.ParseAddrPort(s)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("client: address %q is not ip:port", clip(s))
	}
	return checkAddrPort(ap)
}

func checkAddrPort(ap netip.AddrPort) (netip.AddrPort, error) {
	if ap.Port() == 0 {
		return netip.AddrPort{}, fmt.Errorf("client: address %s has port 0", ap)
	}
	if ap.Addr().Zone() != "" {
		return netip.AddrPort{}, fmt.Errorf("client: address %s has a zone", ap)
	}
	return netip.AddrPortFrom(canonical(ap.Addr()), ap.Port()), nil
}

// canonical is the form addresses are keyed by: IPv4-mapped IPv6 as IPv4
// (what the kernel reports for a dual-stack socket), no zone.
func canonical(a netip.Addr) netip.Addr { return a.Unmap().WithZone("") }

// parseIdentity parses a SPIFFE ID the proxy may require: one of its own
// trust domain.
func parseIdentity(s string, td spiffeid.TrustDomain) (spiffeid.ID, error) {
	if s == "" {
		return spiffeid.ID{}, errors.New("client: no identity")
	}
	id, err := spiffeid.FromString(s)
	if err != nil {
		return spiffeid.ID{}, fmt.Errorf("client: identity %q: %w", clip(s), err)
	}
	if !id.MemberOf(td) {
		return spiffeid.ID{}, fmt.Errorf("client: identity %q is outside trust domain %q", clip(s), td)
	}
	return id, nil
}

// clip bounds controller-sent text quoted in errors and logs.
func clip(s string) string {
	const maxLen = 256
	if len(s) <= maxLen {
		return s
	}
	return s[:maxLen] + "…"
}
