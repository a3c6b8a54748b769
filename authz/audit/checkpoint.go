package audit

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"time"

	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// A checkpoint record is a chained record (event "checkpoint") that signs
// the head of the chain before it. Its signature is over this text, which
// the verifier rebuilds from the chain, not from the checkpoint's own
// claims:
//
//	mesh.audit.v1 checkpoint\n
//	stream <stream>\n
//	seq <seq of the last record covered, decimal>\n
//	head <hash of that record, 64 lowercase hex>\n
//	time <the checkpoint record's time, RFC 3339 UTC, as in its "time">\n
//
// Text rather than JSON so that any auditor can rebuild it byte for byte
// (docs/audit.md verifies one with openssl).

// checkpoint is the part of a checkpoint record that other records lack.
type checkpoint struct {
	// Seq and Head are the seq and hash of the last record covered: the
	// record just before the checkpoint.
	Seq  uint64 `json:"checkpoint.seq,omitempty"`
	Head string `json:"checkpoint.head,omitempty"`
	// Signer is the SPIFFE ID of the SVID that signed.
	Signer string `json:"checkpoint.signer,omitempty"`
	// Alg names the key and signature scheme (the alg* constants).
	Alg string `json:"checkpoint.alg,omitempty"`
	// X5C is the signing chain, leaf first, then intermediates (not the
	// root): base64 (standard, padded) DER, as JWS x5c.
	X5C []string `json:"checkpoint.x5c,omitempty"`
	// Sig is the signature, base64 (standard, padded).
	Sig string `json:"checkpoint.sig,omitempty"`
}

func (c *checkpoint) isZero() bool {
	return c.Seq == 0 && c.Head == "" && c.Signer == "" && c.Alg == "" && c.X5C == nil && c.Sig == ""
}

// Signature algorithms, one per kind of SVID key. The name is derived
// from the signer's public key and checked against it, so a verifier is
// never told by the log how to verify.
const (
	// ECDSA over SHA-256 of the message; ASN.1 DER signature (what
	// openssl dgst and Go's ecdsa.SignASN1 produce, not JWS's r||s).
	AlgECDSAP256SHA256 = "ecdsa-p256-sha256"
	// The same with P-384 and SHA-384.
	AlgECDSAP384SHA384 = "ecdsa-p384-sha384"
	// Pure Ed25519 over the message.
	AlgEd25519 = "ed25519"
	// RSASSA-PSS, SHA-256, MGF1-SHA-256, salt length 32.
	AlgRSAPSSSHA256 = "rsa-pss-sha256"
)

// maxChain bounds the certificates a checkpoint may carry: a leaf and a
// few intermediates.
const maxChain = 8

// message is the signed text of a checkpoint.
func message(stream string, seq uint64, head string, at time.Time) []byte {
	return fmt.Appendf(nil, "%s checkpoint\nstream %s\nseq %d\nhead %s\ntime %s\n", Type, stream, seq, head, at.UTC().Format(time.RFC3339Nano))
}

// algFor names the algorithm a key signs checkpoints with, or says why it
// cannot.
func algFor(pub crypto.PublicKey) (string, error) {
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		switch k.Curve {
		case elliptic.P256():
			return AlgECDSAP256SHA256, nil
		case elliptic.P384():
			return AlgECDSAP384SHA384, nil
		}
		return "", fmt.Errorf("ECDSA curve %s is not supported (P-256, P-384)", k.Curve.Params().Name)
	case ed25519.PublicKey:
		return AlgEd25519, nil
	case *rsa.PublicKey:
		if k.N.BitLen() < 2048 {
			return "", fmt.Errorf("RSA key of %d bits is too short (2048 at least)", k.N.BitLen())
		}
		return AlgRSAPSSSHA256, nil
	}
	return "", fmt.Errorf("%T keys are not supported (ECDSA P-256/P-384, Ed25519, RSA)", pub)
}

var pssOptions = &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash, Hash: crypto.SHA256}

// digest is what a signer of alg signs, and its options.
func digest(alg string, msg []byte) ([]byte, crypto.SignerOpts) {
	switch alg {
	case AlgECDSAP256SHA256:
		d := sha256.Sum256(msg)
		return d[:], crypto.SHA256
	case AlgECDSAP384SHA384:
		d := sha512.Sum384(msg)
		return d[:], crypto.SHA384
	case AlgRSAPSSSHA256:
		d := sha256.Sum256(msg)
		return d[:], pssOptions
	}
	return msg, crypto.Hash(0) // Ed25519 signs the message itself
}

// sign makes the checkpoint over (stream, seq, head) at time at with the
// source's current SVID.
func sign(src x509svid.Source, stream string, seq uint64, head string, at time.Time) (checkpoint, error) {
	svid, err := src.GetX509SVID()
	if err != nil {
		return checkpoint{}, fmt.Errorf("audit: checkpoint: no SVID: %w", err)
	}
	if svid == nil || len(svid.Certificates) == 0 || svid.PrivateKey == nil {
		return checkpoint{}, errors.New("audit: checkpoint: the SVID source returned an empty SVID")
	}
	leaf := svid.Certificates[0]
	// Verifiers check the chain at the checkpoint's time: a checkpoint
	// signed outside the SVID's validity would fail the whole log.
	if at.Before(leaf.NotBefore) || at.After(leaf.NotAfter) {
		return checkpoint{}, fmt.Errorf("audit: checkpoint: SVID %s is not valid at %s (valid %s to %s)", svid.ID, at.Format(time.RFC3339), leaf.NotBefore.UTC().Format(time.RFC3339), leaf.NotAfter.UTC().Format(time.RFC3339))
	}
	alg, err := algFor(leaf.PublicKey)
	if err != nil {
		return checkpoint{}, fmt.Errorf("audit: checkpoint: SVID %s: %w", svid.ID, err)
	}
	// A key that is not the leaf's would write checkpoints nobody can
	// verify, failing the whole log later; refuse now.
	if pub, ok := svid.PrivateKey.Public().(interface{ Equal(crypto.PublicKey) bool }); !ok || !pub.Equal(leaf.PublicKey) {
		return checkpoint{}, fmt.Errorf("audit: checkpoint: SVID %s: the private key does not match the certificate", svid.ID)
	}
	d, opts := digest(alg, message(stream, seq, head, at))
	sig, err := svid.PrivateKey.Sign(rand.Reader, d, opts)
	if err != nil {
		return checkpoint{}, fmt.Errorf("audit: checkpoint: sign with SVID %s: %w", svid.ID, err)
	}
	x5c := make([]string, len(svid.Certificates))
	for i, c := range svid.Certificates {
		x5c[i] = base64.StdEncoding.EncodeToString(c.Raw)
	}
	return checkpoint{Seq: seq, Head: head, Signer: svid.ID.String(), Alg: alg, X5C: x5c, Sig: base64.StdEncoding.EncodeToString(sig)}, nil
}

// checkSignature verifies sig over msg with the leaf's key under alg,
// which must be the leaf key's own algorithm.
func checkSignature(leaf *x509.Certificate, alg string, msg, sig []byte) error {
	want, err := algFor(leaf.PublicKey)
	if err != nil {
		return fmt.Errorf("signing key: %w", err)
	}
	if alg != want {
		return fmt.Errorf("checkpoint.alg %q does not match the signing key (%s)", alg, want)
	}
	d, _ := digest(alg, msg)
	ok := false
	switch k := leaf.PublicKey.(type) {
	case *ecdsa.PublicKey:
		ok = ecdsa.VerifyASN1(k, d, sig)
	case ed25519.PublicKey:
		ok = ed25519.Verify(k, msg, sig)
	case *rsa.PublicKey:
		ok = rsa.VerifyPSS(k, crypto.SHA256, d, sig, pssOptions) == nil
	}
	if !ok {
		return errors.New("bad signature: the chain head or the checkpoint was changed after signing")
	}
	return nil
}

// parseChain decodes a checkpoint's x5c.
func parseChain(x5c []string) ([]*x509.Certificate, error) {
	if len(x5c) == 0 {
		return nil, errors.New("checkpoint.x5c is empty")
	}
	if len(x5c) > maxChain {
		return nil, fmt.Errorf("checkpoint.x5c has %d certificates, at most %d", len(x5c), maxChain)
	}
	certs := make([]*x509.Certificate, len(x5c))
	for i, s := range x5c {
		der, err := base64.StdEncoding.DecodeString(s)
		if err != nil {
			return nil, fmt.Errorf("checkpoint.x5c[%d]: %w", i, err)
		}
		if certs[i], err = x509.ParseCertificate(der); err != nil {
			return nil, fmt.Errorf("checkpoint.x5c[%d]: %w", i, err)
		}
	}
	return certs, nil
}
