// Package scale runs mesh-controller's control-plane server at scale for
// measurement (issue 10, issue 14): one controller, 10,000 meshed pods,
// 1,000 simulated proxies each on its own mutual-TLS connection, and the
// time from a mesh-wide AuthorizationPolicy change to the last proxy's
// acknowledgement, with the controller's memory and goroutines.
//
// The cluster is client-go's fake clientset and the policies a fake
// watch: this measures the controller's own code (inventory, compiler,
// streams, acks), not an API server. The CA, the gRPC server, its TLS and
// the proxies' SVIDs are real. BenchmarkPolicyPushToLastAck in package
// controlplane and `make bench` (package bench) both drive it.
//
// Everything runs in the caller's process, so its figures include the
// caller's: the heap and goroutines are also split by side (controller,
// proxies, the rest) from the stacks that allocated or run them.
package scale
