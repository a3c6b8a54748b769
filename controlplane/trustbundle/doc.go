// Package trustbundle publishes the mesh's trust bundle as a ConfigMap,
// mesh-trust-bundle, in every namespace whose pods need it: a new proxy
// reads it to verify the controller before it has a stream of its own.
//
// A namespace gets the ConfigMap when it has a meshed pod, carries the
// injection label (its pods must find the ConfigMap when they are
// created), or is named in Config.Namespaces. The ConfigMap is written
// whenever it differs from the bundle, so a hand edit is put back, and is
// never deleted: a namespace that loses its last meshed pod keeps it, and
// it stays current. Only the leader should run a Publisher; every replica
// may construct one.
package trustbundle
