// Package workloadapi serves the SPIFFE Workload API from the sidecar: the
// pod's own X.509 SVID and trust bundle, handed to SPIFFE-native apps in the
// same pod over a unix socket, so they need no agent of their own.
//
// What is served (github.com/spiffe/go-spiffe/v2/proto/spiffe/workload):
//
//   - FetchX509SVID: a stream of the current SVID (chain, PKCS#8 key and the
//     trust domain's bundle), and a new message at every renewal or bundle
//     change.
//   - FetchX509Bundles: a stream of the trust bundle, keyed by the trust
//     domain's ID (spiffe://<td>), and a new message at every change.
//   - FetchJWTSVID, FetchJWTBundles, ValidateJWTSVID (and the WIT methods):
//     Unimplemented. mesh issues no JWT-SVIDs.
//
// As the spec asks (and SPIRE does), every call must carry the metadata
// header workload.spiffe.io: true, else InvalidArgument: a browser or a
// proxy tricked into a request cannot send it. A call when the proxy holds
// no valid SVID is PermissionDenied.
//
// Who may call. This is the one place a private key leaves the proxy: to
// the workload it was issued for, over a unix socket only that workload can
// use. Two checks guard it:
//
//   - the file system: the socket is created in a private directory, given
//     mode 0600 and a POSIX ACL entry (rw) for each allowed UID, then
//     renamed into place, so it is never world-writable, not even for an
//     instant (its mode reads 0660: the group bits show the ACL mask).
//   - the kernel's word on the caller: every connection's peer credentials
//     are read with SO_PEERCRED, and a call from a UID not allowed is
//     PermissionDenied, whatever the file system let through (root with
//     CAP_DAC_OVERRIDE, a socket reached through another mount).
//
// The package does not decide which UIDs are apps: its caller does (mesh-proxy
// run refuses its own UID, the injector fills the list from the app
// containers' runAsUser).
package workloadapi
