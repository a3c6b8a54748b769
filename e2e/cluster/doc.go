// Package cluster runs a real Kubernetes control plane on one machine for
// mesh's end-to-end tests and demo: etcd, kube-apiserver,
// kube-controller-manager and kube-scheduler as child processes on loopback
// ports, with no container runtime and nothing downloaded.
//
// The API server is configured as a production cluster's would be where mesh
// depends on it: RBAC, the default admission plugins plus NodeRestriction
// (so mutating and validating webhooks run), service-account token signing
// (TokenRequest, TokenReview, pod-bound tokens), a kubelet client
// certificate, and aggregator routing to endpoints, so that webhooks and
// pods/proxy are reached at pod IPs with no kube-proxy.
//
// Everything a cluster owns lives under its Dir: the PKI, etcd's data, the
// logs of each component, the pids of its processes and the admin
// kubeconfig. Down cleans up a cluster whose owner died without calling Stop.
package cluster
