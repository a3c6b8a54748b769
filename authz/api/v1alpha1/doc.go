// Package v1alpha1 is the security.mesh.dev/v1alpha1 API: AuthorizationPolicy.
//
// +kubebuilder:object:generate=true
// +groupName=security.mesh.dev
package v1alpha1

//go:generate controller-gen object paths=. crd:crdVersions=v1 output:crd:artifacts:config=../../../charts/mesh/crds
