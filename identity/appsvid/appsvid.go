// Package appsvid is the mark of an SVID certified for an application, the
// one a proxy hands its app through the SPIFFE Workload API, as opposed to
// the proxy's own.
//
// Both carry the pod's SPIFFE ID, so by identity alone they are the same.
// The mark tells them apart where it matters: a proxy's audit checkpoints
// must be signed by the proxy, whose key never leaves it, not by the app,
// which holds a key of its own and could be compromised. The proxy asks
// for the mark in the app's CSR; the CA copies it, and nothing else, from
// the CSR; audit verifiers refuse a checkpoint signed under it. An app
// cannot get an unmarked SVID: it has no token for the identity service.
//
// The mark is a certificate policy (RFC 5280, 4.2.1.4), the standard way
// for a CA to say under which rules it issued a certificate. It is a leaf
// package: the proxy, the CA and the verifier all read it.
package appsvid

import (
	"bytes"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"slices"
)

// OID is the policy "issued for an application through the Workload API":
// a UUID-derived object identifier (ITU-T X.667, arc 2.25), mesh's own
// without registration.
var OID = mustParseOID("2.25.145863336075212358316291050249535916541")

// certificatePolicies is the extension's identifier, id-ce 32.
var certificatePolicies = asn1.ObjectIdentifier{2, 5, 29, 32}

// policiesValue is the extension's value holding OID alone, as
// x509.CreateCertificate writes it: SEQUENCE { SEQUENCE { OID } }.
var policiesValue = func() []byte {
	content, err := OID.MarshalBinary()
	if err != nil {
		panic("appsvid: " + err.Error())
	}
	// Every length here is under 128: one length byte each.
	oid := append([]byte{0x06, byte(len(content))}, content...)
	info := append([]byte{0x30, byte(len(oid))}, oid...)
	return append([]byte{0x30, byte(len(info))}, info...)
}()

func mustParseOID(s string) x509.OID {
	o, err := x509.ParseOID(s)
	if err != nil {
		panic("appsvid: " + err.Error())
	}
	return o
}

// Request is the CSR extension that asks for the mark, for
// x509.CertificateRequest.ExtraExtensions.
func Request() pkix.Extension {
	return pkix.Extension{Id: certificatePolicies, Value: bytes.Clone(policiesValue)}
}

// Requested reports whether a CSR asks for the mark, exactly as Request
// writes it: a CSR asking for other policies gets none.
func Requested(csr *x509.CertificateRequest) bool {
	for _, e := range csr.Extensions {
		if e.Id.Equal(certificatePolicies) && !e.Critical && bytes.Equal(e.Value, policiesValue) {
			return true
		}
	}
	return false
}

// Marked reports whether a certificate carries the mark among its
// policies.
func Marked(cert *x509.Certificate) bool {
	return slices.ContainsFunc(cert.Policies, OID.Equal)
}
