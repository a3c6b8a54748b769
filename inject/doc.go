// Package inject adds mesh's sidecars to a pod: the mutation behind the
// controller's mutating admission webhook, as a pure function of the pod,
// its namespace's labels and the injector's Config.
//
// A pod is injected when its namespace is labelled mesh.dev/inject=enabled
// or the pod itself says mesh.dev/inject: enabled (label or annotation);
// mesh.dev/inject: disabled opts it out. What is added:
//
//   - mesh-init, first of the init containers: `mesh-proxy init`, which
//     installs the pod's iptables rules. It runs as root with NET_ADMIN and
//     NET_RAW only, as iptables needs.
//   - mesh-proxy, second: `mesh-proxy run` as a native sidecar (an init
//     container with restartPolicy Always), so it starts before the app's
//     own init containers and containers, whose traffic the rules already
//     send to it, and stops after them (Jobs finish). Its startup probe
//     holds the app back until it has an SVID.
//   - the proxy's volumes: a projected ServiceAccount token for the
//     identity service's audience, the namespace's trust-bundle ConfigMap,
//     the audit log's emptyDir, and the iptables lock's.
//   - the app containers' HTTP, TCP and gRPC probes, rewritten to GETs on the
//     proxy's admin port at /app-health/<container>/<livez|readyz|startupz>,
//     with the originals (named ports resolved) in the proxy's
//     MESH_APP_PROBES (package proxy/probe), so that strict mTLS needs no
//     plaintext exception for the kubelet.
//   - with mesh.dev/workload-api: enabled, the proxy's SPIFFE Workload API
//     (package workloadapi) shared with the app containers: an in-memory
//     emptyDir for its socket, read-only in every app container, with
//     SPIFFE_ENDPOINT_SOCKET pointing at it, and the app containers'
//     declared UIDs as the only callers the proxy lets in. A pod whose app
//     containers do not all declare a runAsUser is refused.
//   - the annotation mesh.dev/injected: <version>.
//
// Injection is idempotent (a pod with a mesh-proxy container is left as
// it is) and skips hostNetwork pods. Bad annotation values are refused with
// a PodError naming the annotation, which the webhook turns into a denial.
// The result is an RFC 6902 JSON patch of targeted operations (inserts and
// probe replacements), so fields of the pod this package's Kubernetes types
// do not know are never rewritten.
package inject
