package meshproxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"sigs.k8s.io/yaml"

	"github.com/mesh-dev/mesh/authz"
	"github.com/mesh-dev/mesh/proxy"
)

// standaloneFile is mesh-proxy standalone's configuration file, as
// written. File paths in it are relative to the file's own directory.
type standaloneFile struct {
	// TrustDomain of the mesh. Required.
	TrustDomain string `json:"trustDomain"`
	// Identity: the SVID and bundle files (package identity/filesource).
	Identity struct {
		Cert   string `json:"cert"`
		Key    string `json:"key"`
		Bundle string `json:"bundle"`
	} `json:"identity"`
	// Workload is what policies are matched against, as a pod would be.
	Workload struct {
		Namespace string            `json:"namespace"`
		Name      string            `json:"name"`
		Labels    map[string]string `json:"labels"`
	} `json:"workload"`
	// Inbound: mesh mTLS in, plaintext to Forward. Optional.
	Inbound *struct {
		Listen  string `json:"listen"`
		Forward string `json:"forward"`
		// Protocol is what Forward speaks: http, grpc or opaque; empty
		// means detected per connection.
		Protocol string `json:"protocol"`
		// Policy is a file of AuthorizationPolicies in the CRD's YAML.
		Policy string `json:"policy"`
		// DefaultPolicy decides what no ALLOW policy governs; empty
		// means allow-mesh.
		DefaultPolicy string `json:"defaultPolicy"`
	} `json:"inbound"`
	// Outbound: plaintext in, mesh mTLS to one destination each.
	Outbound []struct {
		Listen      string `json:"listen"`
		Destination string `json:"destination"`
		Peer        string `json:"peer"`
		// Protocol is what the application speaks to Destination: http,
		// grpc or opaque; empty means detected from its first bytes.
		// opaque is for protocols whose server speaks first (a
		// database): detection would wait for bytes that never come.
		Protocol string `json:"protocol"`
	} `json:"outbound"`
	// Admin is the admin server's address (/ready, /metrics, /identity,
	// /shutdown); empty means none.
	Admin string `json:"admin"`
	// AuditLog is where audit records go: a file, or - (the default) for
	// standard output.
	AuditLog string `json:"auditLog"`
}

// standalone is a standaloneFile checked and parsed.
type standalone struct {
	td                spiffeid.TrustDomain
	cert, key, bundle string
	namespace, name   string
	inbound           *inboundRoute
	outbound          []outboundRoute
	admin, auditLog   string
	table             *authz.Table
	protocols         map[uint16]proxy.AppProtocol
	destinations      destinationTable
	policyWarnings    []string
}

type inboundRoute struct {
	listen  string
	forward netip.AddrPort
}

type outboundRoute struct {
	listen      string
	destination netip.AddrPort
	peer        spiffeid.ID
}

// loadStandalone reads and checks the file at path. Every error names the
// file and the field.
func loadStandalone(path string) (*standalone, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("standalone: %w", err)
	}
	s, err := parseStandalone(b, filepath.Dir(path))
	if err != nil {
		return nil, fmt.Errorf("standalone: %s: %w", path, err)
	}
	return s, nil
}

// parseStandalone checks a configuration whose relative paths are
// relative to dir.
func parseStandalone(b []byte, dir string) (*standalone, error) {
	var f standaloneFile
	if err := yaml.Unmarshal(b, &f); err != nil {
		return nil, err
	}
	// Unknown keys are errors, named by their path (yaml's strict mode
	// names only the last key).
	var tree any
	if err := yaml.Unmarshal(b, &tree); err != nil {
		return nil, err
	}
	if err := unknownKeys(tree, reflect.TypeOf(f), ""); err != nil {
		return nil, err
	}
	return f.check(dir)
}

// check validates every field and the invariants between them.
func (f *standaloneFile) check(dir string) (*standalone, error) {
	s := &standalone{admin: f.Admin, auditLog: f.AuditLog, destinations: destinationTable{}, protocols: map[uint16]proxy.AppProtocol{}}
	var err error
	if f.TrustDomain == "" {
		return nil, errors.New("trustDomain: required")
	}
	if s.td, err = spiffeid.TrustDomainFromString(f.TrustDomain); err != nil {
		return nil, fmt.Errorf("trustDomain: %w", err)
	}
	rel := func(p string) string {
		if p == "" || filepath.IsAbs(p) {
			return p
		}
		return filepath.Join(dir, p)
	}
	for _, field := range []struct{ name, value string }{{"identity.cert", f.Identity.Cert}, {"identity.key", f.Identity.Key}, {"identity.bundle", f.Identity.Bundle}} {
		if field.value == "" {
			return nil, fmt.Errorf("%s: required", field.name)
		}
	}
	s.cert, s.key, s.bundle = rel(f.Identity.Cert), rel(f.Identity.Key), rel(f.Identity.Bundle)
	if f.Inbound == nil && len(f.Outbound) == 0 {
		return nil, errors.New("neither inbound nor outbound: the proxy would do nothing")
	}
	if s.auditLog == "" {
		s.auditLog = "-"
	} else if s.auditLog != "-" {
		s.auditLog = rel(s.auditLog)
	}
	s.namespace, s.name = f.Workload.Namespace, f.Workload.Name
	if s.name == "" {
		if s.name, err = os.Hostname(); err != nil || s.name == "" {
			s.name = "standalone"
		}
	}

	// own are the proxy's listen addresses, to find duplicates and loops.
	type own struct {
		field string
		addr  netip.AddrPort
	}
	var owns []own
	listen := func(field, addr string) error {
		ap, err := listenAddr(addr)
		if err != nil {
			return fmt.Errorf("%s: %w", field, err)
		}
		for _, o := range owns {
			if o.addr.Port() == ap.Port() && (o.addr.Addr() == ap.Addr() || o.addr.Addr().IsUnspecified() || ap.Addr().IsUnspecified()) {
				return fmt.Errorf("%s: %s is also %s", field, addr, o.field)
			}
		}
		owns = append(owns, own{field, ap})
		return nil
	}
	if s.admin != "" {
		if err := listen("admin", s.admin); err != nil {
			return nil, err
		}
	}
	if in := f.Inbound; in != nil {
		if err := listen("inbound.listen", in.Listen); err != nil {
			return nil, err
		}
		fwd, err := netip.ParseAddrPort(in.Forward)
		if err != nil || fwd.Port() == 0 {
			return nil, fmt.Errorf("inbound.forward: %q is not ip:port", in.Forward)
		}
		fwd = unmapped(fwd)
		// The proxy takes a delivery to one of its own ports for a loop,
		// whatever the host.
		for _, o := range owns {
			if o.addr.Port() == fwd.Port() {
				return nil, fmt.Errorf("inbound.forward: port %d is also %s's: the proxy refuses a delivery to its own ports as a loop; use another port", fwd.Port(), o.field)
			}
		}
		s.inbound = &inboundRoute{listen: in.Listen, forward: fwd}
		if in.Protocol != "" {
			p, err := proxy.ParseAppProtocol(in.Protocol)
			if err != nil {
				return nil, fmt.Errorf("inbound.protocol: %w", err)
			}
			s.protocols[fwd.Port()] = p
		}
		if err := s.compile(in.Policy, in.DefaultPolicy, rel(in.Policy), f.Workload.Labels); err != nil {
			return nil, err
		}
	} else if f.Workload.Namespace != "" || len(f.Workload.Labels) > 0 {
		return nil, errors.New("workload: only policies read it, and they need an inbound")
	}
	for i, o := range f.Outbound {
		field := fmt.Sprintf("outbound[%d]", i)
		if err := listen(field+".listen", o.Listen); err != nil {
			return nil, err
		}
		dst, err := netip.ParseAddrPort(o.Destination)
		if err != nil || dst.Port() == 0 || dst.Addr().IsUnspecified() {
			return nil, fmt.Errorf("%s.destination: %q is not ip:port", field, o.Destination)
		}
		dst = unmapped(dst)
		if o.Peer == "" {
			return nil, fmt.Errorf("%s.peer: required: the SPIFFE ID the destination must present", field)
		}
		peer, err := spiffeid.FromString(o.Peer)
		if err != nil {
			return nil, fmt.Errorf("%s.peer: %w", field, err)
		}
		if !peer.MemberOf(s.td) {
			return nil, fmt.Errorf("%s.peer: %s is not in trust domain %s", field, peer, s.td)
		}
		var proto proxy.AppProtocol
		if o.Protocol != "" {
			if proto, err = proxy.ParseAppProtocol(o.Protocol); err != nil {
				return nil, fmt.Errorf("%s.protocol: %w", field, err)
			}
		}
		if prev, ok := s.destinations[dst]; ok && prev.Identity != peer {
			return nil, fmt.Errorf("%s.peer: %s is %s for another outbound listener", field, dst, prev.Identity)
		} else if ok && prev.Protocol != proto {
			return nil, fmt.Errorf("%s.protocol: %s is %q for another outbound listener", field, dst, prev.Protocol)
		}
		s.destinations[dst] = proxy.Destination{Meshed: true, Identity: peer, Protocol: proto}
		s.outbound = append(s.outbound, outboundRoute{listen: o.Listen, destination: dst, peer: peer})
	}
	// The proxy takes a destination on loopback at one of its own ports for
	// itself: a connection would loop.
	for _, r := range s.outbound {
		for _, o := range owns {
			if r.destination.Port() == o.addr.Port() && (r.destination.Addr().IsLoopback() || r.destination.Addr() == o.addr.Addr()) {
				return nil, fmt.Errorf("outbound destination %s is at %s's port: the proxy refuses it as a loop; give the two proxies different ports", r.destination, o.field)
			}
		}
	}
	return s, nil
}

// compile builds the inbound's policy table: the file's policies, or the
// default policy alone.
func (s *standalone) compile(policy, defaultPolicy, path string, labels map[string]string) error {
	mode := authz.DefaultAllowMesh
	if defaultPolicy != "" {
		var err error
		if mode, err = authz.ParseDefaultMode(defaultPolicy); err != nil {
			return fmt.Errorf("inbound.defaultPolicy: %w", err)
		}
	}
	in := authz.Input{TrustDomain: s.td, MeshDefault: mode,
		Workload: authz.Workload{Namespace: s.namespace, Pod: s.name, Labels: labels}}
	if policy != "" {
		if s.namespace == "" {
			return errors.New("workload.namespace: required with inbound.policy: a policy applies to the workloads of its namespace")
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return fmt.Errorf("inbound.policy: %w", err)
		}
		if in.Policies, err = authz.ParsePolicies(b); err != nil {
			return fmt.Errorf("inbound.policy %s: %w", path, err)
		}
		applies := 0
		for _, p := range in.Policies {
			if p.Namespace == s.namespace || p.Namespace == authz.RootNamespace {
				applies++
			}
		}
		if applies == 0 && len(in.Policies) > 0 {
			s.policyWarnings = append(s.policyWarnings, fmt.Sprintf("inbound.policy %s: no policy is in namespace %q or %q: only the default policy applies", path, s.namespace, authz.RootNamespace))
		}
	}
	t, err := authz.Compile(in)
	if err != nil {
		return fmt.Errorf("inbound.policy %s: %w", path, err)
	}
	s.table = t
	s.policyWarnings = append(s.policyWarnings, t.Warnings()...)
	return nil
}

// destinationTable is standalone's fixed address → destination table:
// the configured destinations are meshed, every other address is not.
type destinationTable map[netip.AddrPort]proxy.Destination

// Lookup implements proxy.Destinations.
func (t destinationTable) Lookup(_ context.Context, addr netip.AddrPort) (proxy.Destination, error) {
	return t[addr], nil
}

// listenAddr checks an ip:port to listen on; the port may not be 0: the
// other proxy and the application must know it.
func listenAddr(s string) (netip.AddrPort, error) {
	if s == "" {
		return netip.AddrPort{}, errors.New("required")
	}
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("%q is not ip:port", s)
	}
	n, err := strconv.ParseUint(port, 10, 16)
	if err != nil || n == 0 {
		return netip.AddrPort{}, fmt.Errorf("%q: port %q is not 1-65535", s, port)
	}
	ip := netip.IPv6Unspecified()
	if host != "" {
		if ip, err = netip.ParseAddr(host); err != nil {
			return netip.AddrPort{}, fmt.Errorf("%q: %q is not an IP address", s, host)
		}
	}
	return unmapped(netip.AddrPortFrom(ip, uint16(n))), nil
}

func unmapped(a netip.AddrPort) netip.AddrPort {
	return netip.AddrPortFrom(a.Addr().Unmap(), a.Port())
}

// unknownKeys finds a key of v, decoded from YAML, that t has no field
// for, and names it by its path (inbound.lisen, outbound[1].peeer).
func unknownKeys(v any, t reflect.Type, path string) error {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch t.Kind() {
	case reflect.Struct:
		m, ok := v.(map[string]any)
		if !ok {
			return nil // a type error, which Unmarshal reported
		}
		fields := map[string]reflect.Type{}
		for i := range t.NumField() {
			name, _, _ := strings.Cut(t.Field(i).Tag.Get("json"), ",")
			fields[name] = t.Field(i).Type
		}
		keys := make([]string, 0, len(m))
		for k := range m {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		for _, k := range keys {
			ft, ok := fields[k]
			if !ok {
				return fmt.Errorf("%s: unknown field", strings.TrimPrefix(path+"."+k, "."))
			}
			if err := unknownKeys(m[k], ft, path+"."+k); err != nil {
				return err
			}
		}
	case reflect.Slice:
		l, _ := v.([]any)
		for i, e := range l {
			if err := unknownKeys(e, t.Elem(), fmt.Sprintf("%s[%d]", path, i)); err != nil {
				return err
			}
		}
	}
	return nil
}
