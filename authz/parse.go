package authz

import (
	"bytes"
	"fmt"
	"regexp"

	"sigs.k8s.io/yaml"

	"github.com/mesh-dev/mesh/authz/api/v1alpha1"
)

var docSeparator = regexp.MustCompile(`(?m)^---\s*$`)

// ParsePolicies reads AuthorizationPolicies from YAML documents separated
// by ---, as kubectl would. Unknown fields are errors, as are documents of
// another kind; each error names its document.
func ParsePolicies(data []byte) ([]v1alpha1.AuthorizationPolicy, error) {
	var out []v1alpha1.AuthorizationPolicy
	for i, doc := range docSeparator.Split(string(data), -1) {
		if len(bytes.TrimSpace([]byte(doc))) == 0 {
			continue
		}
		var p v1alpha1.AuthorizationPolicy
		if err := yaml.UnmarshalStrict([]byte(doc), &p); err != nil {
			return nil, fmt.Errorf("authz: document %d: %w", i+1, err)
		}
		if p.APIVersion != v1alpha1.GroupVersion.String() || p.Kind != "AuthorizationPolicy" {
			return nil, fmt.Errorf("authz: document %d is %s %s, not %s AuthorizationPolicy", i+1, p.APIVersion, p.Kind, v1alpha1.GroupVersion)
		}
		out = append(out, p)
	}
	return out, nil
}
