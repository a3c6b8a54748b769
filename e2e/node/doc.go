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
// Images are local binaries: mesh-e2e/echo is bin/mesh-e2e-echo, and
// mesh/<name>:<tag> is bin/<name>.
//
// What it emulates so far: node registration and lease, the pod network,
// containers as processes (command, args, env with fieldRefs, runAsUser),
// readiness from container start or an HTTP readiness probe, pod status,
// and deletion with graceful termination. See docs/node-agent.md for what
// is not there yet.
package node
