// Package authz is mesh's identity-based authorization: AuthorizationPolicy
// validation, compilation of the policies that apply to one workload into a
// per-port table, and evaluation of requests against that table.
//
// Evaluation is a pure function: a request in, a decision out, with the
// policy and rule that decided and a reason. The same reason string goes to
// the caller, the metrics and the audit log. It does not allocate.
//
// Precedence, for a request to a workload:
//
//  1. an enforced DENY rule matches: deny;
//  2. else, if any enforced ALLOW policy selects the workload: allow only if
//     one of its rules matches;
//  3. else, the default mode: deny, allow-mesh (any identity of our trust
//     domain), allow-same-namespace, or allow-all (plaintext included).
//
// AUDIT policies never change a decision; they mark matching requests for
// the audit log. Dry-run policies are evaluated as if enforced, separately:
// their would-be decision is reported, never applied.
package authz
