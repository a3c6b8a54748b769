package meshproxy

import (
	"fmt"
	"net/netip"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/mesh-dev/mesh/proxy"
	"github.com/mesh-dev/mesh/proxy/intercept"
)

// parsePairs reads k=v,... for flag.
func parsePairs(s, flag string) (map[string]string, error) {
	out := map[string]string{}
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f == "" {
			continue
		}
		k, v, ok := strings.Cut(f, "=")
		if !ok || k == "" {
			return nil, fmt.Errorf("%s: %q is not key=value", flag, f)
		}
		out[k] = v
	}
	return out, nil
}

// parseProtocols reads --port-protocols (port=http|grpc|opaque,...) and
// --opaque-ports.
func parseProtocols(protocols, opaque string) (map[uint16]proxy.AppProtocol, error) {
	out := map[uint16]proxy.AppProtocol{}
	pairs, err := parsePairs(protocols, "--port-protocols")
	if err != nil {
		return nil, err
	}
	for port, proto := range pairs {
		ports, err := intercept.ParsePorts(port)
		if err != nil || len(ports) != 1 {
			return nil, fmt.Errorf("--port-protocols: %q is not a port", port)
		}
		p, err := proxy.ParseAppProtocol(proto)
		if err != nil {
			return nil, fmt.Errorf("--port-protocols: port %s: %w", port, err)
		}
		out[uint16(ports[0])] = p
	}
	ops, err := intercept.ParsePorts(opaque)
	if err != nil {
		return nil, fmt.Errorf("--opaque-ports: %w", err)
	}
	for _, o := range ops {
		if p, ok := out[uint16(o)]; ok && p != proxy.ProtocolOpaque {
			return nil, fmt.Errorf("--opaque-ports: port %d is declared %s in --port-protocols", o, p)
		}
		out[uint16(o)] = proxy.ProtocolOpaque
	}
	return out, nil
}

// parseDestinations reads --destinations (ip:port=spiffe-id,...).
func parseDestinations(s string) (proxy.StaticDestinations, error) {
	out := proxy.StaticDestinations{}
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f == "" {
			continue
		}
		addr, id, ok := strings.Cut(f, "=")
		ap, err := netip.ParseAddrPort(addr)
		if !ok || err != nil {
			return nil, fmt.Errorf("--destinations: %q is not ip:port=spiffe-id", f)
		}
		sid, err := spiffeid.FromString(id)
		if err != nil {
			return nil, fmt.Errorf("--destinations: %q: %w", f, err)
		}
		out[ap] = sid
	}
	return out, nil
}
