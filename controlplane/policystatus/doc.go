// Package policystatus writes the status of each AuthorizationPolicy:
// whether it is valid, which meshed pods it selects, whether every port
// name in its rules is a port of one of them, and how many of their proxies
// enforce its current generation ("12/12" at observedGeneration 5).
//
// The status is aggregated per policy, never per proxy: Istio's
// per-proxy distribution status cost so much CPU and memory that it was
// disabled and then deleted. Here every controller replica runs a Reporter
// that publishes, in one ConfigMap of its own, how many of the proxies
// connected to it acknowledged each policy generation; the leader alone
// runs a Writer that sums the fresh reports and writes a status only when
// it changed, at a bounded rate. Per-proxy detail stays pull-only.
package policystatus
