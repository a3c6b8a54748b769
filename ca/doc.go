// Package ca is mesh's built-in certificate authority.
//
// It keeps a trust bundle of roots and one active intermediate issuer, all
// persisted in a Store (a Kubernetes Secret in production), and signs
// X509-SVIDs for identities its caller has already attested. Signing goes
// through smallstep's CertificateAuthorityService interface, with softcas as
// the built-in backend, so an upstream CA can take its place without
// changing callers.
//
// Issuer rotation is automatic and follows SPIRE's two slots: the next
// issuer is prepared at half the current one's life and activated at five
// sixths of it. Both chain to the same root, so proxies notice nothing. Root
// rotation is an explicit sequence, each step a method that refuses to run
// out of order:
//
//  1. PrepareRoot: a new root joins the trust bundle.
//  2. (wait until every proxy has the new bundle: one SVID renewal cycle)
//  3. ActivateRoot: the issuer switches to one signed by the new root.
//  4. (wait until every SVID of the old issuer has expired)
//  5. RetireRoot: the old root leaves the bundle.
//
// Every SVID is checked against the X509-SVID rules before it is returned.
package ca
