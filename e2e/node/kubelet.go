package node

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// KubeletPort is where the agent serves the kubelet API the API server
// proxies `kubectl logs` to.
const KubeletPort = 10250

// logPath is a container's log file; previous is the one before its last
// restart.
func (n *Node) logPath(ns, pod, container string, previous bool) string {
	name := fmt.Sprintf("%s_%s_%s.log", ns, pod, container)
	if previous {
		name += ".previous"
	}
	return filepath.Join(n.cfg.Dir, "logs", name)
}

// serveKubelet serves /containerLogs over TLS with a certificate the
// cluster CA signs for the node's address, to clients with certificates
// the cluster CA signed (the API server's kubelet client).
func (n *Node) serveKubelet(ctx context.Context) error {
	cert, pool, err := kubeletCert(n.cfg.CACertPath, n.cfg.CAKeyPath)
	if err != nil {
		return err
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /containerLogs/{ns}/{pod}/{container}", n.containerLogs)
	srv := &http.Server{
		Addr:              net.JoinHostPort(NodeIP, strconv.Itoa(KubeletPort)),
		Handler:           mux,
		ReadHeaderTimeout: 10 * time.Second,
		TLSConfig:         &tls.Config{Certificates: []tls.Certificate{cert}, ClientCAs: pool, ClientAuth: tls.RequireAndVerifyClientCert, MinVersion: tls.VersionTLS12},
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.ListenAndServeTLS("", "") }()
	select {
	case <-ctx.Done():
		_ = srv.Close()
		<-errc
		return nil
	case err := <-errc:
		if errors.Is(err, http.ErrServerClosed) {
			return nil
		}
		return fmt.Errorf("node: kubelet endpoint: %w", err)
	}
}

func (n *Node) containerLogs(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	path := n.logPath(r.PathValue("ns"), r.PathValue("pod"), r.PathValue("container"), q.Get("previous") == "true")
	f, err := os.Open(path)
	if err != nil {
		http.Error(w, fmt.Sprintf("no logs for container %q of pod %s/%s", r.PathValue("container"), r.PathValue("ns"), r.PathValue("pod")), http.StatusNotFound)
		return
	}
	defer f.Close()
	w.Header().Set("Content-Type", "text/plain")
	if tail, err := strconv.Atoi(q.Get("tailLines")); err == nil && tail >= 0 {
		b, _ := io.ReadAll(f)
		lines := strings.SplitAfter(string(b), "\n")
		if lines[len(lines)-1] == "" {
			lines = lines[:len(lines)-1]
		}
		if len(lines) > tail {
			lines = lines[len(lines)-tail:]
		}
		io.WriteString(w, strings.Join(lines, ""))
	} else {
		io.Copy(w, f)
	}
	if q.Get("follow") != "true" {
		return
	}
	flusher, _ := w.(http.Flusher)
	br := bufio.NewReader(f)
	for {
		if flusher != nil {
			flusher.Flush()
		}
		select {
		case <-r.Context().Done():
			return
		case <-time.After(200 * time.Millisecond):
		}
		if _, err := io.Copy(w, br); err != nil {
			return
		}
	}
}

// kubeletCert makes the agent's serving certificate, signed by the
// cluster CA, and the pool that verifies the API server's client
// certificate.
func kubeletCert(caCertPath, caKeyPath string) (tls.Certificate, *x509.CertPool, error) {
	caPEM, err := os.ReadFile(caCertPath)
	if err != nil {
		return tls.Certificate{}, nil, fmt.Errorf("node: cluster CA: %w", err)
	}
	keyPEM, err := os.ReadFile(caKeyPath)
	if err != nil {
		return tls.Certificate{}, nil, fmt.Errorf("node: cluster CA key: %w", err)
	}
	cb, _ := pem.Decode(caPEM)
	kb, _ := pem.Decode(keyPEM)
	if cb == nil || kb == nil {
		return tls.Certificate{}, nil, errors.New("node: cluster CA files are not PEM")
	}
	ca, err := x509.ParseCertificate(cb.Bytes)
	if err != nil {
		return tls.Certificate{}, nil, err
	}
	caKey, err := x509.ParsePKCS8PrivateKey(kb.Bytes)
	if err != nil {
		return tls.Certificate{}, nil, err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, nil, err
	}
	serial, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	tmpl := &x509.Certificate{
		SerialNumber: serial, Subject: pkix.Name{CommonName: "kubelet"},
		NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(24 * time.Hour),
		IPAddresses: []net.IP{net.ParseIP(NodeIP)},
		KeyUsage:    x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, key.Public(), caKey)
	if err != nil {
		return tls.Certificate{}, nil, fmt.Errorf("node: kubelet certificate: %w", err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, pool, nil
}
