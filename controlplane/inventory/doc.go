// Package inventory is mesh-controller's view of the cluster, built from
// shared informers: which pods are meshed and at which addresses, the
// Services and their ready endpoints, the namespaces and the
// AuthorizationPolicies. From it the controller answers the proxies'
// watches: each pod's compiled policy and the mesh's destinations.
//
// Informer callbacks only record what changed and wake the watchers; they
// never send on a stream, so one slow proxy cannot stall the others.
package inventory
