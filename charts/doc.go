// Package charts holds mesh's Helm chart, charts/mesh, and the tests that
// check it with Helm's own libraries: lint, golden `helm template` output for
// the default and a full values file, the values schema's refusals, RBAC
// that grants what the controller's code uses and nothing it does not, and
// hardened containers. There is no Go API: `helm install mesh charts/mesh`
// is the interface, and docs/install.md describes it.
//
// Regenerate the golden files after an intended change with
//
//	go test ./charts/ -update
package charts
