// Package node is the local cluster's node agent: it plays the kubelet's
// part with processes and Linux network namespaces, so that pods scheduled
// by the real kube-scheduler run on one machine with no container runtime.
//
// Each pod gets a network namespace (visible to `ip netns` as
// pod-<namespace>-<name>), a veth into the bridge mesh0 whose host side is
// 198.18.0.1/16, and an address from 198.18.0.0/17 that is never reused
// while in use. Nothing is routed outside 198.18.0.0/16: forwarding is on
// for the bridge alone, behind a guard that keeps routed traffic on it.
// With Config.KubeProxyKubeconfig the agent runs kube-proxy (Services'
// NAT), relays the API server to the node's address, and points pods'
// resolv.conf at the cluster DNS.
// Images are local binaries (see Node.Image): the chart's
// ghcr.io/mesh-dev/mesh-<x> is bin/mesh-<x>, mesh-e2e/<x> is
// bin/mesh-e2e-<x> or else the pinned tool <x>, mesh/<x> is bin/<x>.
//
// The agent works from watches, as the kubelet does: an informer on the
// pods bound to its node queues pod UIDs, and its own workers start and
// stop pods; each ConfigMap and Secret a running pod mounts has a watch of
// its own, whose events rewrite the volumes. A 30 s resync is the only
// periodic work.
//
// What it emulates: node registration and lease, the pod network,
// containers as processes (command, args, env with fieldRefs, runAsUser,
// capabilities), init containers and native sidecars (init containers with
// restartPolicy Always: started in order, each before the next, restarted
// when they exit, counted for readiness, stopped once a Job's containers are
// done, and stopped after the main containers when the pod is deleted),
// startup, readiness and liveness probes (httpGet, tcpSocket and grpc from
// the node; exec in the container's namespaces, as its user), $(VAR)
// expansion, pod status, and deletion with graceful termination. See
// docs/node-agent.md.
package node
