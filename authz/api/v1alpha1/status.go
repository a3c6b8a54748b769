package v1alpha1

import metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

// MaxStatusWorkloads caps AuthorizationPolicyStatus.Workloads: a policy in
// the root namespace may select every pod of the mesh, and the status is
// a summary (per-proxy detail is pulled with meshctl, not stored here).
const MaxStatusWorkloads = 20

// Condition types of an AuthorizationPolicy's status.
const (
	// ConditionAccepted is True when the policy passes validation; when
	// False its message is the validation error.
	ConditionAccepted = "Accepted"
	// ConditionResolved is True when the policy selects at least one
	// meshed pod and every port name in its rules is a port of a selected
	// pod: a policy that would silently do nothing says so here.
	ConditionResolved = "Resolved"
	// ConditionEnforced is True when the proxy of every selected workload
	// enforces the policy's observedGeneration.
	ConditionEnforced = "Enforced"
)

// Condition reasons.
const (
	// ReasonAccepted: Accepted is True.
	ReasonAccepted = "Accepted"
	// ReasonInvalid: Accepted is False, the message says why.
	ReasonInvalid = "Invalid"
	// ReasonResolved: Resolved is True.
	ReasonResolved = "Resolved"
	// ReasonNoWorkloads: Resolved is False, the policy selects no meshed pod.
	ReasonNoWorkloads = "NoWorkloads"
	// ReasonUnresolvedPorts: Resolved is False, the message names each port
	// name that no selected pod has.
	ReasonUnresolvedPorts = "UnresolvedPorts"
	// ReasonEnforced: Enforced is True.
	ReasonEnforced = "Enforced"
	// ReasonPending: Enforced is False, some proxies do not yet enforce the
	// current generation; the message counts them.
	ReasonPending = "Pending"
)

// AuthorizationPolicyStatus is what mesh-controller observed of a policy.
// It is aggregated per policy, never per proxy, so its size and its write
// rate do not grow with the number of proxies.
type AuthorizationPolicyStatus struct {
	// ObservedGeneration is the metadata.generation this status describes.
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`

	// Conditions are Accepted, Resolved and Enforced.
	// +listType=map
	// +listMapKey=type
	// +optional
	Conditions []metav1.Condition `json:"conditions,omitempty"`

	// SelectedWorkloads counts the live meshed pods the policy selects.
	// +optional
	SelectedWorkloads int32 `json:"selectedWorkloads"`

	// EnforcedWorkloads counts the selected pods whose proxies enforce
	// ObservedGeneration.
	// +optional
	EnforcedWorkloads int32 `json:"enforcedWorkloads"`

	// Enforced is EnforcedWorkloads/SelectedWorkloads, e.g. "12/12", for
	// kubectl's column.
	// +optional
	Enforced string `json:"enforced,omitempty"`

	// Workloads are the selected pods as namespace/name, sorted, at most
	// 20 of them; SelectedWorkloads counts all.
	// +kubebuilder:validation:MaxItems=20
	// +optional
	Workloads []string `json:"workloads,omitempty"`
}
