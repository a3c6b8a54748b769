package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// Resource is the API's plural resource name.
const Resource = "authorizationpolicies"

// GroupVersion is the API's group and version.
var GroupVersion = schema.GroupVersion{Group: "security.mesh.dev", Version: "v1alpha1"}

// AddToScheme registers the API's types.
func AddToScheme(s *runtime.Scheme) error {
	s.AddKnownTypes(GroupVersion, &AuthorizationPolicy{}, &AuthorizationPolicyList{})
	metav1.AddToGroupVersion(s, GroupVersion)
	return nil
}

// Action is what a policy does to the requests its rules match.
// +kubebuilder:validation:Enum=ALLOW;DENY;AUDIT
type Action string

// Actions.
const (
	Allow Action = "ALLOW"
	Deny  Action = "DENY"
	Audit Action = "AUDIT"
)

// AuthorizationPolicy allows, denies or audits requests to the workloads it
// selects, by the caller's identity and the request's port, method and
// path. In the mesh's root namespace it applies to every workload.
//
// +kubebuilder:object:root=true
// +kubebuilder:resource:shortName=authz;ap,categories=mesh
// +kubebuilder:printcolumn:name="Action",type=string,JSONPath=`.spec.action`
// +kubebuilder:printcolumn:name="Dry-Run",type=boolean,JSONPath=`.spec.dryRun`
// +kubebuilder:printcolumn:name="Accepted",type=string,JSONPath=`.status.conditions[?(@.type=="Accepted")].status`
// +kubebuilder:printcolumn:name="Enforced",type=string,JSONPath=`.status.enforced`
// +kubebuilder:printcolumn:name="Observed",type=integer,JSONPath=`.status.observedGeneration`,priority=1
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
// +kubebuilder:subresource:status
type AuthorizationPolicy struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec AuthorizationPolicySpec `json:"spec"`

	// Status is written by mesh-controller: whether the policy is valid,
	// which workloads it selects and how many of their proxies enforce it.
	// +optional
	Status AuthorizationPolicyStatus `json:"status,omitempty"`
}

// AuthorizationPolicySpec is a policy's content.
// +kubebuilder:validation:XValidation:rule="self.action != 'DENY' || size(self.rules) > 0",message="a DENY policy needs at least one rule"
type AuthorizationPolicySpec struct {
	// Selector picks the pods of the namespace the policy applies to.
	// Omitted: all of them.
	// +optional
	Selector *metav1.LabelSelector `json:"selector,omitempty"`

	// Action is ALLOW, DENY or AUDIT.
	Action Action `json:"action"`

	// DryRun evaluates the policy and logs what it would decide, never
	// changing a decision.
	// +optional
	DryRun bool `json:"dryRun,omitempty"`

	// Rules: a request matches the policy when it matches one rule. An
	// ALLOW policy with no rules allows nothing.
	// +kubebuilder:validation:MaxItems=1024
	// +optional
	Rules []Rule `json:"rules,omitempty"`
}

// Rule matches a request that matches one From entry and one To entry. An
// omitted list matches anything.
type Rule struct {
	// +kubebuilder:validation:MaxItems=256
	// +optional
	From []Source `json:"from,omitempty"`
	// +kubebuilder:validation:MaxItems=256
	// +optional
	To []Operation `json:"to,omitempty"`
}

// Source is who the caller is. Every field set in one entry must match.
// +kubebuilder:validation:XValidation:rule="has(self.identities) || has(self.namespaces) || has(self.serviceAccounts) || (has(self.unauthenticated) && self.unauthenticated)",message="a from entry must set identities, namespaces, serviceAccounts or unauthenticated"
type Source struct {
	// Identities are SPIFFE IDs, exact or ending in /* for a prefix.
	// +kubebuilder:validation:MaxItems=256
	// +optional
	Identities []string `json:"identities,omitempty"`
	// Namespaces: any mesh identity from these namespaces.
	// +kubebuilder:validation:MaxItems=256
	// +optional
	Namespaces []string `json:"namespaces,omitempty"`
	// ServiceAccounts: mesh identities of these ServiceAccount names (in
	// Namespaces, when set; in any namespace otherwise).
	// +kubebuilder:validation:MaxItems=256
	// +optional
	ServiceAccounts []string `json:"serviceAccounts,omitempty"`
	// Unauthenticated matches plaintext callers (permissive mode only). It
	// cannot be combined with the other fields.
	// +optional
	Unauthenticated bool `json:"unauthenticated,omitempty"`
}

// Operation is what the caller asks for. Every field set in one entry must
// match.
type Operation struct {
	// Ports are numbers or container port names.
	// +kubebuilder:validation:MaxItems=256
	// +optional
	Ports []intstr.IntOrString `json:"ports,omitempty"`
	// Methods are HTTP methods, upper-case. A connection that is not HTTP
	// has no method or path: in an ALLOW or AUDIT policy an entry with
	// methods or paths does not match it, in a DENY policy it does (fail
	// closed).
	// +kubebuilder:validation:MaxItems=32
	// +optional
	Methods []string `json:"methods,omitempty"`
	// Paths are exact, a prefix ending in *, or a suffix starting with *,
	// matched case-sensitively against the normalised request path, and so
	// written normalised (no dot segments, no doubled slashes).
	// +kubebuilder:validation:MaxItems=256
	// +optional
	Paths []string `json:"paths,omitempty"`
}

// AuthorizationPolicyList is a list of policies.
// +kubebuilder:object:root=true
type AuthorizationPolicyList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []AuthorizationPolicy `json:"items"`
}
