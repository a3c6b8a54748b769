package authz

import (
	"bytes"
	"encoding/json"
	"fmt"
	"regexp"
	"time"

	"sigs.k8s.io/yaml"
)

var docSeparator = regexp.MustCompile(`(?m)^---\s*$`)

// APIVersion is the API group and version of AuthorizationPolicy
// documents (v1alpha1.GroupVersion).
const APIVersion = "security.mesh.dev/v1alpha1"

// ParsePolicies reads AuthorizationPolicies from YAML documents separated
// by ---, as kubectl would. Unknown fields are errors, as are documents of
// another kind; each error names its document.
//
// A document is decoded strictly into the whole of the API type's shape
// (metadata and status included, declared in decode as apimachinery
// declares them), so it refuses what decoding into
// v1alpha1.AuthorizationPolicy refuses (authz/validation's tests compare
// the two) without linking apimachinery.
func ParsePolicies(data []byte) ([]Policy, error) {
	var out []Policy
	for i, doc := range docSeparator.Split(string(data), -1) {
		if len(bytes.TrimSpace([]byte(doc))) == 0 {
			continue
		}
		p, err := decode([]byte(doc), func(b []byte, v any) error { return yaml.UnmarshalStrict(b, v) })
		if err != nil {
			return nil, fmt.Errorf("authz: document %d: %w", i+1, err)
		}
		if p.APIVersion != APIVersion || p.Kind != "AuthorizationPolicy" {
			return nil, fmt.Errorf("authz: document %d is %s %s, not %s AuthorizationPolicy", i+1, p.APIVersion, p.Kind, APIVersion)
		}
		out = append(out, p)
	}
	return out, nil
}

// DecodePolicy reads one policy's JSON, as mesh-controller pushes it, the
// way encoding/json reads it into v1alpha1.AuthorizationPolicy: unknown
// fields are ignored, a value of the wrong type anywhere (metadata and
// status included) is an error.
func DecodePolicy(b []byte) (Policy, error) {
	return decode(b, json.Unmarshal)
}

// decode reads a policy with unmarshal into the API type's whole shape and
// keeps what authz compiles.
func decode(b []byte, unmarshal func([]byte, any) error) (Policy, error) {
	// The names of these types are apimachinery's: the decoder's errors
	// name them ("Go struct field ObjectMeta.metadata.generation ...").
	type (
		UID                        string
		ManagedFieldsOperationType string
		ConditionStatus            string
	)
	type OwnerReference struct {
		APIVersion         string `json:"apiVersion"`
		Kind               string `json:"kind"`
		Name               string `json:"name"`
		UID                UID    `json:"uid"`
		Controller         *bool  `json:"controller,omitempty"`
		BlockOwnerDeletion *bool  `json:"blockOwnerDeletion,omitempty"`
	}
	type ManagedFieldsEntry struct {
		Manager     string                     `json:"manager,omitempty"`
		Operation   ManagedFieldsOperationType `json:"operation,omitempty"`
		APIVersion  string                     `json:"apiVersion,omitempty"`
		Time        *rfc3339Time               `json:"time,omitempty"`
		FieldsType  string                     `json:"fieldsType,omitempty"`
		FieldsV1    *json.RawMessage           `json:"fieldsV1,omitempty"`
		Subresource string                     `json:"subresource,omitempty"`
	}
	type ObjectMeta struct {
		Name                       string               `json:"name,omitempty"`
		GenerateName               string               `json:"generateName,omitempty"`
		Namespace                  string               `json:"namespace,omitempty"`
		SelfLink                   string               `json:"selfLink,omitempty"`
		UID                        UID                  `json:"uid,omitempty"`
		ResourceVersion            string               `json:"resourceVersion,omitempty"`
		Generation                 int64                `json:"generation,omitempty"`
		CreationTimestamp          rfc3339Time          `json:"creationTimestamp,omitempty"`
		DeletionTimestamp          *rfc3339Time         `json:"deletionTimestamp,omitempty"`
		DeletionGracePeriodSeconds *int64               `json:"deletionGracePeriodSeconds,omitempty"`
		Labels                     map[string]string    `json:"labels,omitempty"`
		Annotations                map[string]string    `json:"annotations,omitempty"`
		OwnerReferences            []OwnerReference     `json:"ownerReferences,omitempty"`
		Finalizers                 []string             `json:"finalizers,omitempty"`
		ManagedFields              []ManagedFieldsEntry `json:"managedFields,omitempty"`
	}
	type Condition struct {
		Type               string          `json:"type"`
		Status             ConditionStatus `json:"status"`
		ObservedGeneration int64           `json:"observedGeneration,omitempty"`
		LastTransitionTime rfc3339Time     `json:"lastTransitionTime"`
		Reason             string          `json:"reason"`
		Message            string          `json:"message"`
	}
	type AuthorizationPolicyStatus struct {
		ObservedGeneration int64       `json:"observedGeneration,omitempty"`
		Conditions         []Condition `json:"conditions,omitempty"`
		SelectedWorkloads  int32       `json:"selectedWorkloads"`
		EnforcedWorkloads  int32       `json:"enforcedWorkloads"`
		Enforced           string      `json:"enforced,omitempty"`
		Workloads          []string    `json:"workloads,omitempty"`
	}
	type AuthorizationPolicy struct {
		TypeMeta   `json:",inline"`
		ObjectMeta `json:"metadata,omitempty"`
		Spec       PolicySpec                `json:"spec"`
		Status     AuthorizationPolicyStatus `json:"status,omitempty"`
	}

	var p AuthorizationPolicy
	if err := unmarshal(b, &p); err != nil {
		return Policy{}, err
	}
	q := Policy{TypeMeta: p.TypeMeta, Spec: p.Spec}
	q.Name, q.Namespace, q.Generation = p.Name, p.Namespace, p.Generation
	return q, nil
}

// rfc3339Time decodes a timestamp as metav1.Time does: null, or an RFC
// 3339 string. Only the refusals matter here; the value is dropped.
type rfc3339Time struct{}

func (*rfc3339Time) UnmarshalJSON(b []byte) error {
	if string(b) == "null" {
		return nil
	}
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return err
	}
	_, err := time.Parse(time.RFC3339, s)
	return err
}
