package meshctl

import (
	"strings"
	"unicode"

	"github.com/mesh-dev/mesh/proxy"
)

// What meshctl reads from a pod's admin port is written by whatever runs
// there: whoever may create pods can run a container named mesh-proxy
// that answers anything. Its text reaches the operator's terminal, so
// every string is cleaned on the way in: a control character or escape
// sequence becomes U+FFFD, and a string is cut at maxProxyText bytes.

// maxProxyText bounds one string read from a proxy.
const maxProxyText = 1024

// untrusted is s fit for a terminal.
func untrusted(s string) string {
	if len(s) > maxProxyText {
		s = s[:maxProxyText] + "…"
	}
	return strings.Map(func(r rune) rune {
		if !unicode.IsPrint(r) && r != ' ' {
			return unicode.ReplacementChar
		}
		return r
	}, strings.ToValidUTF8(s, "\uFFFD"))
}

func untrustedAll(ss []string) []string {
	for i := range ss {
		ss[i] = untrusted(ss[i])
	}
	return ss
}

// cleanIdentity cleans every string of an /identity answer.
func cleanIdentity(id *proxy.IdentityInfo) {
	for _, s := range []*string{&id.SPIFFEID, &id.TrustDomain, &id.SerialNumber, &id.Issuer, &id.KeyType, &id.SignedByRoot} {
		*s = untrusted(*s)
	}
	id.BundleRoots = untrustedAll(id.BundleRoots)
	id.InboundMode, id.OutboundMode = proxy.Mode(untrusted(string(id.InboundMode))), proxy.Mode(untrusted(string(id.OutboundMode)))
}

// cleanPolicy cleans every string of a /policy answer.
func cleanPolicy(p *proxy.PolicyInfo) {
	for _, s := range []*string{&p.Source, &p.Version, &p.DefaultMode} {
		*s = untrusted(*s)
	}
	p.Warnings = untrustedAll(p.Warnings)
	for i := range p.Policies {
		p.Policies[i].Namespace, p.Policies[i].Name = untrusted(p.Policies[i].Namespace), untrusted(p.Policies[i].Name)
	}
}
