// Package proxy is mesh's sidecar data plane.
//
// iptables rules (package intercept) send every inbound TCP connection of
// the pod to the inbound listener and every outbound one to the outbound
// listener. Outbound, the proxy recovers the original destination, and if
// the control plane says a meshed workload runs there it originates mutual
// TLS to it, requiring the peer's SPIFFE ID to be exactly the one expected
// at that address. Inbound, it recognises mesh TLS by its ALPN, terminates
// it, verifies the client's SVID against the trust bundle, asks the
// authorization hook, and only then connects to the application.
// Plaintext is accepted only in permissive mode, and, in strict mode, for
// kubelet probes from the node (see docs/proxy.md).
//
// Between proxies: TLS 1.3 only, X25519MLKEM768 preferred, the certificate
// read from the SVID source at every handshake (so rotation needs no
// restart), and the peer checked in VerifyConnection, which Go also runs on
// resumed sessions.
package proxy
