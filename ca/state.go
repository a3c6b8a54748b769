package ca

import (
	"crypto"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"time"
)

// keyPair is a CA certificate, its chain up to (excluding) the root, and
// its key. key is nil for a user-supplied root whose key was not given.
type keyPair struct {
	chain []*x509.Certificate // chain[0] is the certificate itself
	key   crypto.Signer
}

func (k *keyPair) cert() *x509.Certificate { return k.chain[0] }

// state is everything the CA persists.
type state struct {
	bundle          []*x509.Certificate
	root            keyPair
	issuer          keyPair
	nextIssuer      *keyPair
	nextRoot        *keyPair
	retiringRoot    *x509.Certificate
	rootActivatedAt time.Time
}

func (s *state) encode() (map[string][]byte, error) {
	d := map[string][]byte{
		KeyBundle:     encodeCerts(s.bundle),
		KeyRootCert:   encodeCerts(s.root.chain),
		KeyIssuerCert: encodeCerts(s.issuer.chain),
	}
	put := func(certName, keyName string, kp *keyPair) error {
		if kp == nil {
			return nil
		}
		d[certName] = encodeCerts(kp.chain)
		if kp.key == nil {
			return nil
		}
		b, err := encodeKey(kp.key)
		if err != nil {
			return err
		}
		d[keyName] = b
		return nil
	}
	if err := put(KeyRootCert, KeyRootKey, &s.root); err != nil {
		return nil, err
	}
	if err := put(KeyIssuerCert, KeyIssuerKey, &s.issuer); err != nil {
		return nil, err
	}
	if err := put(KeyNextIssuerCert, KeyNextIssuerKey, s.nextIssuer); err != nil {
		return nil, err
	}
	if err := put(KeyNextRootCert, KeyNextRootKey, s.nextRoot); err != nil {
		return nil, err
	}
	if s.retiringRoot != nil {
		d[KeyRetiringRootCert] = encodeCerts([]*x509.Certificate{s.retiringRoot})
		d[KeyRootActivatedAt] = []byte(s.rootActivatedAt.UTC().Format(time.RFC3339))
	}
	return d, nil
}

// decodeState parses stored data and checks that it is a coherent CA: the
// issuer chains to the active root, which is in the bundle, and each key
// matches its certificate.
func decodeState(d map[string][]byte) (*state, error) {
	s := &state{}
	var err error
	if s.bundle, err = decodeCerts(d[KeyBundle], KeyBundle); err != nil {
		return nil, err
	}
	load := func(certName, keyName string, keyRequired bool) (*keyPair, error) {
		chain, err := decodeCerts(d[certName], certName)
		if err != nil {
			return nil, err
		}
		kp := &keyPair{chain: chain}
		if b, ok := d[keyName]; ok {
			if kp.key, err = decodeKey(b, keyName); err != nil {
				return nil, err
			}
			if !publicKeysEqual(kp.key.Public(), chain[0].PublicKey) {
				return nil, fmt.Errorf("ca: %s does not match %s", keyName, certName)
			}
		} else if keyRequired {
			return nil, fmt.Errorf("ca: %s is missing", keyName)
		}
		if !chain[0].IsCA {
			return nil, fmt.Errorf("ca: %s is not a CA certificate", certName)
		}
		return kp, nil
	}
	root, err := load(KeyRootCert, KeyRootKey, false)
	if err != nil {
		return nil, err
	}
	issuer, err := load(KeyIssuerCert, KeyIssuerKey, true)
	if err != nil {
		return nil, err
	}
	s.root, s.issuer = *root, *issuer
	if !containsCert(s.bundle, s.root.cert()) {
		return nil, fmt.Errorf("ca: the active root (%s) is not in %s", KeyRootCert, KeyBundle)
	}
	if err := chainsTo(s.issuer.chain, s.root.cert()); err != nil {
		return nil, fmt.Errorf("ca: %s: %w", KeyIssuerCert, err)
	}
	if _, ok := d[KeyNextIssuerCert]; ok {
		if s.nextIssuer, err = load(KeyNextIssuerCert, KeyNextIssuerKey, true); err != nil {
			return nil, err
		}
	}
	if _, ok := d[KeyNextRootCert]; ok {
		if s.nextRoot, err = load(KeyNextRootCert, KeyNextRootKey, true); err != nil {
			return nil, err
		}
	}
	if b, ok := d[KeyRetiringRootCert]; ok {
		certs, err := decodeCerts(b, KeyRetiringRootCert)
		if err != nil {
			return nil, err
		}
		s.retiringRoot = certs[0]
		if s.rootActivatedAt, err = time.Parse(time.RFC3339, string(d[KeyRootActivatedAt])); err != nil {
			return nil, fmt.Errorf("ca: %s: %w", KeyRootActivatedAt, err)
		}
	}
	return s, nil
}

func chainsTo(chain []*x509.Certificate, root *x509.Certificate) error {
	for i, c := range chain {
		parent := root
		if i+1 < len(chain) {
			parent = chain[i+1]
		}
		if err := c.CheckSignatureFrom(parent); err != nil {
			return fmt.Errorf("certificate %d (%q) is not signed by %q: %w", i, c.Subject, parent.Subject, err)
		}
	}
	return nil
}

func containsCert(certs []*x509.Certificate, c *x509.Certificate) bool {
	for _, x := range certs {
		if x.Equal(c) {
			return true
		}
	}
	return false
}

func encodeCerts(certs []*x509.Certificate) []byte {
	var out []byte
	for _, c := range certs {
		out = append(out, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
	}
	return out
}

func decodeCerts(b []byte, name string) ([]*x509.Certificate, error) {
	var certs []*x509.Certificate
	for len(b) > 0 {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			break
		}
		if blk.Type != "CERTIFICATE" {
			return nil, fmt.Errorf("ca: %s: unexpected PEM block %q", name, blk.Type)
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			return nil, fmt.Errorf("ca: %s: %w", name, err)
		}
		certs = append(certs, c)
	}
	if len(certs) == 0 {
		return nil, fmt.Errorf("ca: %s: no certificate", name)
	}
	return certs, nil
}

func encodeKey(k crypto.Signer) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		return nil, fmt.Errorf("ca: marshal key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

func decodeKey(b []byte, name string) (crypto.Signer, error) {
	blk, _ := pem.Decode(b)
	if blk == nil {
		return nil, fmt.Errorf("ca: %s: not PEM", name)
	}
	var k any
	var err error
	switch blk.Type {
	case "PRIVATE KEY":
		k, err = x509.ParsePKCS8PrivateKey(blk.Bytes)
	case "EC PRIVATE KEY":
		k, err = x509.ParseECPrivateKey(blk.Bytes)
	case "RSA PRIVATE KEY":
		k, err = x509.ParsePKCS1PrivateKey(blk.Bytes)
	default:
		err = fmt.Errorf("unsupported PEM block %q", blk.Type)
	}
	if err != nil {
		return nil, fmt.Errorf("ca: %s: %w", name, err)
	}
	s, ok := k.(crypto.Signer)
	if !ok {
		return nil, errors.New("ca: " + name + ": not a signing key")
	}
	return s, nil
}

func publicKeysEqual(a, b crypto.PublicKey) bool {
	ea, ok := a.(interface{ Equal(crypto.PublicKey) bool })
	return ok && ea.Equal(b)
}
