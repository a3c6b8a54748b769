// Package client is the proxy's side of the control-plane streams: it keeps
// the proxy's inbound policy, its view of the mesh's destinations and its
// trust bundle current from mesh-controller's watches
// (controlplane/api/v1).
//
// Each enabled watch runs in its own goroutine under Run and reconnects on
// any error, to whichever controller replica the connection reaches, with
// jittered exponential back-off. Every new stream starts with the whole
// state (a destinations snapshot, the current policy, the current bundle),
// so a reconnect is a resync. While no controller answers, the last state
// is kept: a controller outage never empties the proxy's tables, and never
// turns a meshed destination into a plaintext one.
//
// Destinations are answered by Lookup, lock-free: every change builds a new
// immutable table that replaces the old one atomically. Before the first
// snapshot Lookup waits (bounded) rather than guess that an address is
// outside the mesh.
//
// Policies are handed to the Policy callback and acknowledged to the
// controller once it returned (an ACK with the version enforced, or a NACK
// with the callback's error); trust bundles are checked (never empty, every
// root a parsable CA certificate) before the Bundle callback sees them.
package client
