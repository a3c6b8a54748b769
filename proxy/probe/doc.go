// Package probe performs a pod's original kubelet probes from inside the
// proxy, so that strict mTLS needs no plaintext exception for the node's
// address (issue 9, finding 2: a plaintext exception can be abused by request
// smuggling, and the node address is also where NodePort and LoadBalancer
// traffic comes from).
//
// As Istio does, the injector rewrites each container's HTTP, TCP and gRPC
// probes into HTTP GETs on the proxy's admin port at
// /app-health/<container>/<livez|readyz|startupz>, and hands the originals
// to the proxy as a JSON map (Parse). The Handler serves exactly those paths:
// it performs the original probe against the pod's own IP and answers the
// kubelet 200 or 503. The kubelet's request itself never reaches the app;
// the app sees only the probe as configured.
//
// Probe semantics follow the kubelet's: an HTTP probe succeeds on a status
// from 200 to 399, without keep-alive, proxy or certificate verification,
// with a bounded body read; a TCP probe succeeds on connect; a gRPC probe
// calls grpc.health.v1.Health/Check and succeeds on SERVING. Each probe is
// bounded by its timeoutSeconds. One deliberate difference: redirects are
// followed only to the same address and port as the probe (the kubelet
// follows any on the same host), so an app cannot point the proxy at its own
// admin port; a redirect not followed counts as success, as for the kubelet.
package probe
