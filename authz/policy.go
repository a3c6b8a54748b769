package authz

import "github.com/mesh-dev/mesh/internal/intorstr"

// Policy is an AuthorizationPolicy as authz compiles it: its identity and
// its spec. Its JSON is that of the API type (authz/api/v1alpha1), field
// for field, so that what mesh-controller pushes (v1alpha1 policies as
// JSON) decodes into it unchanged; it is declared here so that the proxy
// does not link apimachinery for it (docs/benchmarks.md).
type Policy struct {
	TypeMeta   `json:",inline"`
	ObjectMeta `json:"metadata,omitempty"`

	Spec PolicySpec `json:"spec"`
}

// TypeMeta is a document's kind and API version.
type TypeMeta struct {
	Kind       string `json:"kind,omitempty"`
	APIVersion string `json:"apiVersion,omitempty"`
}

// ObjectMeta is the part of a policy's metadata that decides requests and
// names them.
type ObjectMeta struct {
	Name       string `json:"name,omitempty"`
	Namespace  string `json:"namespace,omitempty"`
	Generation int64  `json:"generation,omitempty"`
}

// Action is what a policy does to the requests its rules match.
type Action string

// Actions.
const (
	Allow Action = "ALLOW"
	Deny  Action = "DENY"
	Audit Action = "AUDIT"
)

// PolicySpec is a policy's content; see v1alpha1.AuthorizationPolicySpec
// for each field's meaning.
type PolicySpec struct {
	Selector *LabelSelector `json:"selector,omitempty"`
	Action   Action         `json:"action"`
	DryRun   bool           `json:"dryRun,omitempty"`
	Rules    []Rule         `json:"rules,omitempty"`
}

// Rule matches a request that matches one From entry and one To entry. An
// omitted list matches anything.
type Rule struct {
	From []Source    `json:"from,omitempty"`
	To   []Operation `json:"to,omitempty"`
}

// Source is who the caller is. Every field set in one entry must match.
type Source struct {
	Identities      []string `json:"identities,omitempty"`
	Namespaces      []string `json:"namespaces,omitempty"`
	ServiceAccounts []string `json:"serviceAccounts,omitempty"`
	Unauthenticated bool     `json:"unauthenticated,omitempty"`
}

// Operation is what the caller asks for. Every field set in one entry must
// match.
type Operation struct {
	// Ports are numbers or container port names.
	Ports   []intorstr.IntOrString `json:"ports,omitempty"`
	Methods []string               `json:"methods,omitempty"`
	Paths   []string               `json:"paths,omitempty"`
}
