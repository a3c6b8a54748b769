// Package proxy is mesh's sidecar data plane.
//
// iptables rules (package intercept) send every inbound TCP connection of
// the pod to the inbound listener and every outbound one to the outbound
// listener. Outbound, the proxy recovers the original destination, and if
// the control plane says a meshed workload runs there it originates mutual
// TLS to it, requiring the peer's SPIFFE ID to be exactly the one expected
// at that address. Inbound, it recognises mesh TLS by its ALPN, terminates
// it, verifies the client's SVID against the trust bundle, asks the
// authorization hook, and only then connects to the application, at the
// pod's own IP. Plaintext is accepted only in permissive mode: in strict
// mode not even kubelet probes get in as plaintext; they are rewritten to
// the admin port, where the proxy performs them (package probe).
//
// What the client speaks is declared per port or detected from its first
// bytes, never decided by a timeout; HTTP/1 passes a strict framing gate
// (package h1), and every HTTP request has its method, path and headers
// normalised (package normalize) before it is authorized and forwarded, so
// the application receives exactly what was decided (docs/security.md,
// "Bypasses we test for").
//
// Between proxies: TLS 1.3 only, X25519MLKEM768 preferred, the certificate
// read from the SVID source at every handshake (so rotation needs no
// restart), and the peer checked in VerifyConnection, which Go also runs on
// resumed sessions.
package proxy
