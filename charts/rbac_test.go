package charts

import (
	"slices"
	"strings"
	"testing"

	rbacv1 "k8s.io/api/rbac/v1"
	"sigs.k8s.io/yaml"
)

// request is one API request the controller makes, as RBAC sees it.
type request struct {
	verb, group, resource string // resource may be "resource/subresource"
	// namespace is "" for cluster-scoped resources and for lists and
	// watches across all namespaces.
	namespace string
	// name is the object's name; empty for create (RBAC cannot see the
	// new object's name) and for lists without a metadata.name selector.
	name string
}

// allowedBy reports whether rules grant r, with RBAC's matching: every
// verb, group and resource must match, and resourceNames, when set, must
// contain the request's name (so they never match create).
func allowedBy(rules []rbacv1.PolicyRule, r request) bool {
	for _, rule := range rules {
		if match(rule.Verbs, r.verb) && match(rule.APIGroups, r.group) && match(rule.Resources, r.resource) &&
			(len(rule.ResourceNames) == 0 || (r.name != "" && slices.Contains(rule.ResourceNames, r.name))) {
			return true
		}
	}
	return false
}

func match(list []string, s string) bool {
	return slices.Contains(list, s) || slices.Contains(list, rbacv1.ResourceAll)
}

// authorize is the RBAC authorizer for the controller's ServiceAccount
// under the chart's bindings: the Role counts only in its namespace, the
// ClusterRole everywhere.
func authorize(t *testing.T, o *objects, r request) bool {
	t.Helper()
	sa := rbacv1.Subject{Kind: rbacv1.ServiceAccountKind, Name: "mesh-controller", Namespace: releaseNS}
	for _, b := range o.roleBindings {
		if !slices.Contains(b.Subjects, sa) || b.RoleRef.Kind != "Role" || b.Namespace != r.namespace {
			continue
		}
		for _, role := range o.roles {
			if role.Name == b.RoleRef.Name && role.Namespace == b.Namespace && allowedBy(role.Rules, r) {
				return true
			}
		}
	}
	for _, b := range o.clusterRoleBindings {
		if !slices.Contains(b.Subjects, sa) || b.RoleRef.Kind != "ClusterRole" {
			continue
		}
		for _, role := range o.clusterRoles {
			if role.Name == b.RoleRef.Name && allowedBy(role.Rules, r) {
				return true
			}
		}
	}
	return false
}

// needs are the requests the controller's code makes: each must be
// allowed. The trust-bundle and policy-status tests run on the real API
// server with rules of their own; these are the same requests.
func needs(selfSigned bool) []request {
	ns, shop := releaseNS, "shop"
	r := []request{
		// ca/store.go Load, and meshcontroller's watch of the CA Secret
		// (field selector metadata.name=mesh-ca).
		{"get", "", "secrets", ns, "CA"},
		{"list", "", "secrets", ns, "CA"},
		{"watch", "", "secrets", ns, "CA"},
		// meshcontroller/leader.go (client-go LeaseLock).
		{"get", "coordination.k8s.io", "leases", ns, "mesh-controller"},
		{"create", "coordination.k8s.io", "leases", ns, ""},
		{"update", "coordination.k8s.io", "leases", ns, "mesh-controller"},
		// controlplane/policystatus Reporter.
		{"create", "", "configmaps", ns, ""},
		{"update", "", "configmaps", ns, "mesh-enforcement-mesh-controller-7d9f-x2x4q"},
		{"delete", "", "configmaps", ns, "mesh-enforcement-mesh-controller-7d9f-x2x4q"},
		// identity/server.go.
		{"create", "authentication.k8s.io", "tokenreviews", "", ""},
		{"get", "", "pods", shop, "web-1"},
		// meshcontroller/webhook.go: a namespace the informer has not seen.
		{"get", "", "namespaces", "", shop},
		// Shared informers: inventory, trust bundle, policy status.
		{"list", "", "pods", "", ""}, {"watch", "", "pods", "", ""},
		{"list", "", "services", "", ""}, {"watch", "", "services", "", ""},
		{"list", "", "namespaces", "", ""}, {"watch", "", "namespaces", "", ""},
		{"list", "discovery.k8s.io", "endpointslices", "", ""}, {"watch", "discovery.k8s.io", "endpointslices", "", ""},
		// ConfigMaps: the trust-bundle ones by name (a metadata.name field
		// selector) in every namespace, the controller's own namespace's.
		{"list", "", "configmaps", "", "mesh-trust-bundle"}, {"watch", "", "configmaps", "", "mesh-trust-bundle"},
		{"list", "", "configmaps", ns, ""}, {"watch", "", "configmaps", ns, ""},
		{"list", "security.mesh.dev", "authorizationpolicies", "", ""}, {"watch", "security.mesh.dev", "authorizationpolicies", "", ""},
		// controlplane/policystatus Writer.
		{"update", "security.mesh.dev", "authorizationpolicies/status", shop, "allow-web"},
		// controlplane/trustbundle.
		{"create", "", "configmaps", shop, ""},
		{"update", "", "configmaps", shop, "mesh-trust-bundle"},
		{"delete", "", "configmaps", shop, "mesh-trust-bundle"},
		// The webhooks' caBundle (the controller's webhook server).
		{"get", "admissionregistration.k8s.io", "mutatingwebhookconfigurations", "", "mesh-injector"},
		{"patch", "admissionregistration.k8s.io", "mutatingwebhookconfigurations", "", "mesh-injector"},
		{"update", "admissionregistration.k8s.io", "mutatingwebhookconfigurations", "", "mesh-injector"},
		{"get", "admissionregistration.k8s.io", "validatingwebhookconfigurations", "", "mesh-policy-validator"},
		{"patch", "admissionregistration.k8s.io", "validatingwebhookconfigurations", "", "mesh-policy-validator"},
		{"update", "admissionregistration.k8s.io", "validatingwebhookconfigurations", "", "mesh-policy-validator"},
	}
	if selfSigned {
		// ca/store.go Save: the first replica creates the Secret, rotations
		// update it.
		r = append(r, request{"create", "", "secrets", ns, ""}, request{"update", "", "secrets", ns, "CA"})
	}
	return r
}

// forbidden are requests an attacker holding the controller's token would
// like, and the controller never makes.
func forbidden(selfSigned bool) []request {
	ns, shop := releaseNS, "shop"
	r := []request{
		{"get", "", "secrets", ns, "other"},
		{"get", "", "secrets", shop, "db-password"},
		{"list", "", "secrets", ns, ""},
		{"list", "", "secrets", "", ""},
		{"update", "", "secrets", ns, "other"},
		{"delete", "", "secrets", ns, "CA"},
		{"create", "", "pods", shop, ""},
		{"update", "", "pods", shop, "web-1"},
		{"delete", "", "pods", shop, "web-1"},
		{"create", "", "pods/exec", shop, "web-1"},
		{"create", "", "serviceaccounts/token", shop, "web"},
		{"update", "", "configmaps", shop, "app-config"},
		// Reading other ConfigMaps: application configuration, which may
		// hold credentials.
		{"list", "", "configmaps", "", ""},
		{"watch", "", "configmaps", "", ""},
		{"list", "", "configmaps", shop, ""},
		{"get", "", "configmaps", shop, "app-config"},
		{"list", "", "configmaps", "", "app-config"},
		{"delete", "", "configmaps", shop, "kube-root-ca.crt"},
		{"update", "", "namespaces", "", shop},
		{"update", "", "services", shop, "web"},
		{"update", "security.mesh.dev", "authorizationpolicies", shop, "allow-web"},
		{"delete", "security.mesh.dev", "authorizationpolicies", shop, "allow-web"},
		{"create", "security.mesh.dev", "authorizationpolicies", shop, ""},
		{"update", "coordination.k8s.io", "leases", ns, "kube-scheduler"},
		{"update", "coordination.k8s.io", "leases", "kube-system", "kube-controller-manager"},
		{"delete", "coordination.k8s.io", "leases", ns, "mesh-controller"},
		{"update", "admissionregistration.k8s.io", "mutatingwebhookconfigurations", "", "other-injector"},
		{"create", "admissionregistration.k8s.io", "mutatingwebhookconfigurations", "", ""},
		{"delete", "admissionregistration.k8s.io", "mutatingwebhookconfigurations", "", "mesh-injector"},
		{"update", "admissionregistration.k8s.io", "validatingwebhookconfigurations", "", "other-validator"},
		{"delete", "admissionregistration.k8s.io", "validatingwebhookconfigurations", "", "mesh-policy-validator"},
		{"update", "rbac.authorization.k8s.io", "clusterroles", "", "mesh-controller"},
		{"escalate", "rbac.authorization.k8s.io", "clusterroles", "", "mesh-controller"},
		{"create", "certificates.k8s.io", "certificatesigningrequests", "", ""},
		// Only the CA Secret's own namespace holds the Role.
		{"create", "coordination.k8s.io", "leases", shop, ""},
		{"update", "", "configmaps", "kube-system", "mesh-enforcement-x"},
	}
	if !selfSigned {
		// A user's CA is never written.
		r = append(r, request{"create", "", "secrets", ns, ""}, request{"update", "", "secrets", ns, "CA"})
	}
	return r
}

// TestRBAC: the chart's RBAC grants every request the controller makes,
// and none of the forbidden ones, with the CA Secret by its name in each
// CA mode.
func TestRBAC(t *testing.T) {
	for _, c := range []struct {
		name, file, caSecret string
		selfSigned           bool
	}{
		{"default", "", "mesh-ca", true},
		{"full (existingSecret)", fullValues, "corp-mesh-ca", false},
	} {
		t.Run(c.name, func(t *testing.T) {
			o := decode(t, mustRender(t, c.file))
			named := func(r request) request {
				if r.name == "CA" {
					r.name = c.caSecret
				}
				return r
			}
			for _, r := range needs(c.selfSigned) {
				if r = named(r); !authorize(t, o, r) {
					t.Errorf("not allowed, and the controller needs it: %+v", r)
				}
			}
			for _, r := range forbidden(c.selfSigned) {
				if r = named(r); authorize(t, o, r) {
					t.Errorf("allowed, and the controller must not be able to: %+v", r)
				}
			}
			for _, rules := range allRules(o) {
				for _, rule := range rules {
					for _, list := range [][]string{rule.Verbs, rule.APIGroups, rule.Resources, rule.ResourceNames} {
						if slices.Contains(list, rbacv1.ResourceAll) {
							t.Errorf("rule %+v has a wildcard", rule)
						}
					}
					if len(rule.NonResourceURLs) != 0 {
						t.Errorf("rule %+v grants non-resource URLs", rule)
					}
				}
			}
		})
	}
}

func allRules(o *objects) [][]rbacv1.PolicyRule {
	var out [][]rbacv1.PolicyRule
	for _, r := range o.roles {
		out = append(out, r.Rules)
	}
	for _, r := range o.clusterRoles {
		out = append(out, r.Rules)
	}
	return out
}

// TestAllowedBy: the matcher refuses what RBAC refuses, so TestRBAC's
// forbidden list means something.
func TestAllowedBy(t *testing.T) {
	rules := []rbacv1.PolicyRule{
		{APIGroups: []string{""}, Resources: []string{"secrets"}, ResourceNames: []string{"a"}, Verbs: []string{"get", "create"}},
		{APIGroups: []string{"x.io"}, Resources: []string{"things/status"}, Verbs: []string{"update"}},
	}
	for _, c := range []struct {
		r    request
		want bool
	}{
		{request{"get", "", "secrets", "n", "a"}, true},
		{request{"get", "", "secrets", "n", "b"}, false},
		{request{"create", "", "secrets", "n", ""}, false}, // resourceNames never match create
		{request{"list", "", "secrets", "n", ""}, false},
		{request{"get", "x.io", "secrets", "n", "a"}, false},
		{request{"update", "x.io", "things/status", "n", "t"}, true},
		{request{"update", "x.io", "things", "n", "t"}, false},
	} {
		if got := allowedBy(rules, c.r); got != c.want {
			t.Errorf("%+v: %v; want %v", c.r, got, c.want)
		}
	}
}

// TestRBACRulesCommented: every rule of every Role and ClusterRole has a
// comment just above it saying what it is for.
func TestRBACRulesCommented(t *testing.T) {
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := mustRender(t, c.file)
			roles := 0
			for _, m := range r.manifests {
				if m.Head.Kind != "Role" && m.Head.Kind != "ClusterRole" {
					continue
				}
				roles++
				var role rbacv1.ClusterRole
				if err := yaml.Unmarshal([]byte(m.Content), &role); err != nil {
					t.Fatal(err)
				}
				commented, seen := 0, 0
				lines := strings.Split(m.Content, "\n")
				in := false
				for i, l := range lines {
					switch {
					case l == "rules:":
						in = true
					case in && strings.HasPrefix(l, "  - "):
						seen++
						if strings.HasPrefix(strings.TrimSpace(lines[i-1]), "#") {
							commented++
						} else {
							t.Errorf("%s %s: rule at %q has no comment above it", m.Head.Kind, role.Name, l)
						}
					case in && !strings.HasPrefix(l, " ") && l != "":
						in = false
					}
				}
				if seen != len(role.Rules) || commented != len(role.Rules) || seen == 0 {
					t.Errorf("%s %s: %d rules, %d found in the text, %d commented", m.Head.Kind, role.Name, len(role.Rules), seen, commented)
				}
			}
			if roles != 2 {
				t.Errorf("%d Roles and ClusterRoles; want 2", roles)
			}
		})
	}
}
