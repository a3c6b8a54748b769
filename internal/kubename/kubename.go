// Package kubename checks the syntax of Kubernetes names: DNS-1123 labels
// and subdomains, label keys and values, and container port names. It
// gives the same verdicts and the same messages as
// k8s.io/apimachinery/pkg/util/validation (kubename_test.go checks that,
// by table and by fuzzing), without linking apimachinery: the proxy checks
// names too, and apimachinery's packages are megabytes of its idle memory
// (docs/benchmarks.md).
package kubename

import (
	"regexp"
	"strconv"
	"strings"
)

const (
	dns1123LabelFmt        = "[a-z0-9]([-a-z0-9]*[a-z0-9])?"
	dns1123LabelMsg        = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character"
	dns1123SubdomainFmt    = dns1123LabelFmt + "(\\." + dns1123LabelFmt + ")*"
	dns1123SubdomainMsg    = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character"
	labelKeyFmt            = "([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]"
	labelKeyMsg            = "must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character"
	labelValueFmt          = "(" + labelKeyFmt + ")?"
	labelValueMsg          = "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character"
	dns1123LabelMaxLen     = 63
	dns1123SubdomainMaxLen = 253
	labelKeyNameMaxLen     = 63
	labelValueMaxLen       = 63
	portNameMaxLen         = 15
)

var (
	dns1123LabelRe     = regexp.MustCompile("^" + dns1123LabelFmt + "$")
	dns1123SubdomainRe = regexp.MustCompile("^" + dns1123SubdomainFmt + "$")
	labelKeyRe         = regexp.MustCompile("^" + labelKeyFmt + "$")
	labelValueRe       = regexp.MustCompile("^" + labelValueFmt + "$")
	portNameCharsRe    = regexp.MustCompile("^[-a-z0-9]+$")
	portNameLetterRe   = regexp.MustCompile("[a-z]")
)

// DNS1123Label checks a DNS (RFC 1123) label, such as a namespace name. It
// returns what is wrong, or nothing.
func DNS1123Label(s string) []string {
	var errs []string
	if len(s) > dns1123LabelMaxLen {
		errs = append(errs, maxLen(dns1123LabelMaxLen, "characters"))
	}
	if !dns1123LabelRe.MatchString(s) {
		if dns1123SubdomainRe.MatchString(s) {
			// A valid subdomain and not a valid label: the length was
			// checked, so it has dots.
			errs = append(errs, "must not contain dots")
		} else {
			errs = append(errs, regexError(dns1123LabelMsg, dns1123LabelFmt, "my-name", "123-abc"))
		}
	}
	return errs
}

// DNS1123Subdomain checks a DNS (RFC 1123) subdomain, such as a
// ServiceAccount name.
func DNS1123Subdomain(s string) []string {
	return dns1123Subdomain(s, "characters")
}

// dns1123Subdomain is DNS1123Subdomain with apimachinery's two wordings of
// the length limit: util/validation says characters, the label-key prefix
// check (api/validate/content) says bytes.
func dns1123Subdomain(s, unit string) []string {
	var errs []string
	if len(s) > dns1123SubdomainMaxLen {
		errs = append(errs, maxLen(dns1123SubdomainMaxLen, unit))
	}
	if !dns1123SubdomainRe.MatchString(s) {
		errs = append(errs, regexError(dns1123SubdomainMsg, dns1123SubdomainFmt, "example.com"))
	}
	return errs
}

// LabelKey checks a label key (what Kubernetes calls a qualified name): a
// name with an optional DNS subdomain prefix and a slash.
func LabelKey(s string) []string {
	var errs []string
	parts := strings.Split(s, "/")
	var name string
	switch len(parts) {
	case 1:
		name = parts[0]
	case 2:
		var prefix string
		prefix, name = parts[0], parts[1]
		if prefix == "" {
			errs = append(errs, "prefix part must be non-empty")
		} else {
			for _, m := range dns1123Subdomain(prefix, "bytes") {
				errs = append(errs, "prefix part "+m)
			}
		}
	default:
		return append(errs, "a valid label key "+regexError(labelKeyMsg, labelKeyFmt, "MyName", "my.name", "123-abc")+
			" with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')")
	}
	if name == "" {
		errs = append(errs, "name part must be non-empty")
	} else if len(name) > labelKeyNameMaxLen {
		errs = append(errs, "name part "+maxLen(labelKeyNameMaxLen, "bytes"))
	}
	if !labelKeyRe.MatchString(name) {
		errs = append(errs, "name part "+regexError(labelKeyMsg, labelKeyFmt, "MyName", "my.name", "123-abc"))
	}
	return errs
}

// LabelValue checks a label value (empty is valid).
func LabelValue(s string) []string {
	var errs []string
	if len(s) > labelValueMaxLen {
		errs = append(errs, maxLen(labelValueMaxLen, "bytes"))
	}
	if !labelValueRe.MatchString(s) {
		errs = append(errs, regexError(labelValueMsg, labelValueFmt, "MyValue", "my_value", "12345"))
	}
	return errs
}

// PortName checks a container port name (an IANA service name, lower
// case only).
func PortName(s string) []string {
	var errs []string
	if len(s) > portNameMaxLen {
		errs = append(errs, maxLen(portNameMaxLen, "characters"))
	}
	if !portNameCharsRe.MatchString(s) {
		errs = append(errs, "must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)")
	}
	if !portNameLetterRe.MatchString(s) {
		errs = append(errs, "must contain at least one letter (a-z)")
	}
	if strings.Contains(s, "--") {
		errs = append(errs, "must not contain consecutive hyphens")
	}
	if len(s) > 0 && (s[0] == '-' || s[len(s)-1] == '-') {
		errs = append(errs, "must not begin or end with a hyphen")
	}
	return errs
}

func maxLen(n int, unit string) string {
	return "must be no more than " + strconv.Itoa(n) + " " + unit
}

func regexError(msg, re string, examples ...string) string {
	msg += " (e.g. "
	for i, e := range examples {
		if i > 0 {
			msg += " or "
		}
		msg += "'" + e + "', "
	}
	return msg + "regex used for validation is '" + re + "')"
}
