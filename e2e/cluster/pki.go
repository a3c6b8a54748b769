package cluster

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"
)

// pki is the cluster's certificate authority and the key pairs made from it.
// It is generated once per cluster dir and reused on restart.
type pki struct {
	dir    string
	caCert *x509.Certificate
	caKey  crypto.Signer
}

const pkiLifetime = 10 * 365 * 24 * time.Hour

func loadOrCreatePKI(dir string) (*pki, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("cluster: create pki dir: %w", err)
	}
	p := &pki{dir: dir}
	certPath, keyPath := p.path("ca.crt"), p.path("ca.key")
	if _, err := os.Stat(certPath); err == nil {
		cert, key, err := readPair(certPath, keyPath)
		if err != nil {
			return nil, err
		}
		p.caCert, p.caKey = cert, key
		return p, nil
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("cluster: generate ca key: %w", err)
	}
	tmpl := &x509.Certificate{
		Subject:               pkix.Name{CommonName: "mesh-e2e-cluster-ca"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(pkiLifetime),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	cert, err := sign(tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, err
	}
	if err := writePair(certPath, keyPath, cert, key); err != nil {
		return nil, err
	}
	p.caCert, p.caKey = cert, key
	return p, nil
}

func (p *pki) path(name string) string { return filepath.Join(p.dir, name) }

// leaf describes a certificate signed by the cluster CA.
type leaf struct {
	name   string // file name stem under the pki dir
	cn     string
	orgs   []string
	dns    []string
	ips    []net.IP
	server bool
	client bool
}

// issue writes <name>.crt and <name>.key unless they exist already.
func (p *pki) issue(l leaf) (certPath, keyPath string, err error) {
	certPath, keyPath = p.path(l.name+".crt"), p.path(l.name+".key")
	if _, err := os.Stat(certPath); err == nil {
		return certPath, keyPath, nil
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return "", "", fmt.Errorf("cluster: generate %s key: %w", l.name, err)
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return "", "", fmt.Errorf("cluster: serial: %w", err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: l.cn, Organization: l.orgs},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(pkiLifetime),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		DNSNames:     l.dns,
		IPAddresses:  l.ips,
	}
	if l.server {
		tmpl.ExtKeyUsage = append(tmpl.ExtKeyUsage, x509.ExtKeyUsageServerAuth)
	}
	if l.client {
		tmpl.ExtKeyUsage = append(tmpl.ExtKeyUsage, x509.ExtKeyUsageClientAuth)
	}
	cert, err := sign(tmpl, p.caCert, key.Public(), p.caKey)
	if err != nil {
		return "", "", err
	}
	if err := writePair(certPath, keyPath, cert, key); err != nil {
		return "", "", err
	}
	return certPath, keyPath, nil
}

// serviceAccountKey writes the key pair the API server signs
// service-account tokens with (and the controller-manager signs legacy
// tokens with).
func (p *pki) serviceAccountKey() (pub, priv string, err error) {
	pub, priv = p.path("sa.pub"), p.path("sa.key")
	if _, err := os.Stat(priv); err == nil {
		return pub, priv, nil
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return "", "", fmt.Errorf("cluster: generate service-account key: %w", err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return "", "", fmt.Errorf("cluster: marshal service-account key: %w", err)
	}
	pubDER, err := x509.MarshalPKIXPublicKey(key.Public())
	if err != nil {
		return "", "", fmt.Errorf("cluster: marshal service-account public key: %w", err)
	}
	if err := writePEM(priv, "PRIVATE KEY", der, 0o600); err != nil {
		return "", "", err
	}
	if err := writePEM(pub, "PUBLIC KEY", pubDER, 0o644); err != nil {
		return "", "", err
	}
	return pub, priv, nil
}

func sign(tmpl, parent *x509.Certificate, pub crypto.PublicKey, key crypto.Signer) (*x509.Certificate, error) {
	if tmpl.SerialNumber == nil {
		serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
		if err != nil {
			return nil, fmt.Errorf("cluster: serial: %w", err)
		}
		tmpl.SerialNumber = serial
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, pub, key)
	if err != nil {
		return nil, fmt.Errorf("cluster: sign %q: %w", tmpl.Subject.CommonName, err)
	}
	return x509.ParseCertificate(der)
}

func writePair(certPath, keyPath string, cert *x509.Certificate, key *ecdsa.PrivateKey) error {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return fmt.Errorf("cluster: marshal key: %w", err)
	}
	if err := writePEM(keyPath, "PRIVATE KEY", der, 0o600); err != nil {
		return err
	}
	return writePEM(certPath, "CERTIFICATE", cert.Raw, 0o644)
}

func writePEM(path, typ string, der []byte, mode os.FileMode) error {
	data := pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der})
	if err := os.WriteFile(path, data, mode); err != nil {
		return fmt.Errorf("cluster: write %s: %w", path, err)
	}
	return nil
}

func readPair(certPath, keyPath string) (*x509.Certificate, crypto.Signer, error) {
	certPEM, err := os.ReadFile(certPath)
	if err != nil {
		return nil, nil, fmt.Errorf("cluster: read %s: %w", certPath, err)
	}
	keyPEM, err := os.ReadFile(keyPath)
	if err != nil {
		return nil, nil, fmt.Errorf("cluster: read %s: %w", keyPath, err)
	}
	cb, _ := pem.Decode(certPEM)
	kb, _ := pem.Decode(keyPEM)
	if cb == nil || kb == nil {
		return nil, nil, fmt.Errorf("cluster: %s or %s is not PEM", certPath, keyPath)
	}
	cert, err := x509.ParseCertificate(cb.Bytes)
	if err != nil {
		return nil, nil, fmt.Errorf("cluster: parse %s: %w", certPath, err)
	}
	k, err := x509.ParsePKCS8PrivateKey(kb.Bytes)
	if err != nil {
		return nil, nil, fmt.Errorf("cluster: parse %s: %w", keyPath, err)
	}
	signer, ok := k.(crypto.Signer)
	if !ok {
		return nil, nil, fmt.Errorf("cluster: %s holds no signing key", keyPath)
	}
	return cert, signer, nil
}
