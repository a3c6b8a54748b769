package main

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"log"
	"math/big"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"time"
)

// fortioVersion is pinned: newer versions need a module that is refused
// here.
const fortioVersion = "v1.66.1"

// env is what setup found or made.
type env struct {
	work                                string
	fortio, haproxy, nginx, meshProxy   string
	pki                                 pkiFiles
	proxyCore, loadCore                 int
	meta                                Meta
	haveHAProxy, haveNGINX, haveTaskset bool
}

// setup installs what is missing (when install is set and we are root),
// builds mesh-proxy from this tree, and makes the PKI.
func setup(ctx context.Context, work string, install bool) (*env, error) {
	e := &env{work: work}
	e.meta = Meta{Date: time.Now().UTC().Format(time.RFC3339), GoVersion: runtime.Version(), CPUs: runtime.NumCPU(), CPU: cpuModel()}
	if k, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		e.meta.Kernel = strings.TrimSpace(string(k))
	}
	e.proxyCore, e.loadCore = 1, 0
	if runtime.NumCPU() < 2 {
		e.proxyCore = 0
		e.meta.Notes = append(e.meta.Notes, "one CPU only: proxies, load generator and backend share it")
	}
	e.meta.ProxyCore, e.meta.LoadCore = e.proxyCore, e.loadCore

	tools := os.Getenv("MESH_TOOLS_DIR")
	if tools == "" {
		// As the Makefile sets it: the repository's .cache/bin (go run
		// ./bench runs at the repository's root).
		wd, err := os.Getwd()
		if err != nil {
			return nil, err
		}
		tools = filepath.Join(wd, ".cache", "bin")
	}
	e.fortio = filepath.Join(tools, "fortio")
	if _, err := os.Stat(e.fortio); err != nil {
		if !install {
			return nil, fmt.Errorf("bench: %s missing: go install fortio.org/fortio@%s with GOBIN=%s", e.fortio, fortioVersion, tools)
		}
		log.Printf("installing fortio %s into %s", fortioVersion, tools)
		cmd := exec.CommandContext(ctx, "go", "install", "fortio.org/fortio@"+fortioVersion)
		cmd.Env = append(os.Environ(), "GOBIN="+tools)
		if out, err := cmd.CombinedOutput(); err != nil {
			return nil, fmt.Errorf("bench: go install fortio: %w\n%s", err, out)
		}
	}
	if err := aptInstall(ctx, install, map[string]string{"haproxy": "haproxy", "nginx": "nginx", "taskset": "util-linux"}); err != nil {
		log.Print(err)
	}
	for _, t := range []struct {
		name string
		path *string
		ok   *bool
	}{{"haproxy", &e.haproxy, &e.haveHAProxy}, {"nginx", &e.nginx, &e.haveNGINX}, {"taskset", new(string), &e.haveTaskset}} {
		if p, err := exec.LookPath(t.name); err == nil {
			*t.path, *t.ok = p, true
		}
	}
	if !e.haveTaskset {
		e.meta.Notes = append(e.meta.Notes, "taskset missing: nothing is pinned")
	}
	e.meta.Versions = map[string]string{"fortio": firstLine(ctx, e.fortio, "version")}
	if e.haveHAProxy {
		e.meta.Versions["haproxy"] = firstLine(ctx, e.haproxy, "-v")
	}
	if e.haveNGINX {
		e.meta.Versions["nginx"] = firstLine(ctx, e.nginx, "-v")
	}

	e.meshProxy = filepath.Join(work, "bin", "mesh-proxy")
	log.Printf("building mesh-proxy into %s", e.meshProxy)
	if err := buildMeshProxy(ctx, e.meshProxy); err != nil {
		return nil, err
	}
	if out, err := exec.CommandContext(ctx, "git", "rev-parse", "--short", "HEAD").Output(); err == nil {
		e.meta.Commit = strings.TrimSpace(string(out))
		if out, err := exec.CommandContext(ctx, "git", "status", "--porcelain", "--untracked-files=no").Output(); err == nil && len(out) > 0 {
			e.meta.Commit += " (with uncommitted changes)"
		}
	}
	var err error
	if e.pki, err = makePKI(filepath.Join(work, "pki")); err != nil {
		return nil, err
	}
	return e, nil
}

// buildFlags are the Makefile's GO_BUILD_FLAGS: the benchmark measures the
// proxy as it ships. TestBuildMeshProxy reads GO_BUILD_FLAGS from the
// Makefile with make and fails unless these are the same words and the
// binary carries their build settings.
var buildFlags = []string{"-trimpath", "-tags", "grpcnotrace"}

// buildMeshProxy builds mesh-proxy into out as make build does.
func buildMeshProxy(ctx context.Context, out string) error {
	args := append(append([]string{"build"}, buildFlags...), "-o", out, "github.com/mesh-dev/mesh/cmd/mesh-proxy")
	if msg, err := exec.CommandContext(ctx, "go", args...).CombinedOutput(); err != nil {
		return fmt.Errorf("bench: build mesh-proxy: %w\n%s", err, msg)
	}
	return nil
}

// aptInstall installs the Debian packages of the missing commands, when
// allowed and root; otherwise it says what to install.
func aptInstall(ctx context.Context, install bool, pkgs map[string]string) error {
	var missing []string
	for cmd, pkg := range pkgs {
		if _, err := exec.LookPath(cmd); err != nil {
			missing = append(missing, pkg)
		}
	}
	if len(missing) == 0 {
		return nil
	}
	if !install || os.Geteuid() != 0 {
		return fmt.Errorf("bench: missing %s: apt-get install %s (those targets are skipped)", strings.Join(missing, ", "), strings.Join(missing, " "))
	}
	log.Printf("apt-get install %s", strings.Join(missing, " "))
	args := append([]string{"install", "-y", "--no-install-recommends"}, missing...)
	if _, err := exec.CommandContext(ctx, "apt-get", args...).CombinedOutput(); err == nil {
		return nil
	}
	if out, err := exec.CommandContext(ctx, "apt-get", "update").CombinedOutput(); err != nil {
		return fmt.Errorf("bench: apt-get update: %w\n%s", err, out)
	}
	if out, err := exec.CommandContext(ctx, "apt-get", args...).CombinedOutput(); err != nil {
		return fmt.Errorf("bench: apt-get install: %w\n%s", err, out)
	}
	return nil
}

func firstLine(ctx context.Context, name string, args ...string) string {
	out, _ := exec.CommandContext(ctx, name, args...).CombinedOutput()
	line, _, _ := strings.Cut(strings.TrimSpace(string(out)), "\n")
	return line
}

func cpuModel() string {
	f, err := os.Open("/proc/cpuinfo")
	if err != nil {
		return ""
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		if k, v, ok := strings.Cut(s.Text(), ":"); ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

// pkiFiles are the run's certificates: one CA, a client and a server
// SVID (ECDSA P-256), each also with a DNS name so that HAProxy and NGINX
// can check the peer's name, as mesh checks its SPIFFE ID.
type pkiFiles struct {
	CA                     string
	ClientCert, ClientKey  string
	ClientPEM              string // certificate and key, for HAProxy
	ServerCert, ServerKey  string
	ServerPEM              string
	ClientID, ServerID     string
	ClientName, ServerName string
}

const trustDomain = "bench.local"

func makePKI(dir string) (pkiFiles, error) {
	p := pkiFiles{
		CA:       filepath.Join(dir, "ca.pem"),
		ClientID: "spiffe://" + trustDomain + "/ns/bench/sa/client", ServerID: "spiffe://" + trustDomain + "/ns/bench/sa/server",
		ClientName: "client." + trustDomain, ServerName: "server." + trustDomain,
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return p, err
	}
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return p, err
	}
	now := time.Now()
	caTmpl := &x509.Certificate{
		SerialNumber: randSerial(), Subject: pkix.Name{Organization: []string{"mesh bench"}, CommonName: "bench root"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(48 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, caKey.Public(), caKey)
	if err != nil {
		return p, err
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		return p, err
	}
	if err := writePEM(p.CA, "CERTIFICATE", caDER); err != nil {
		return p, err
	}
	leaf := func(name, id string) (certFile, keyFile, both string, err error) {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return "", "", "", err
		}
		u, err := url.Parse(id)
		if err != nil {
			return "", "", "", err
		}
		tmpl := &x509.Certificate{
			SerialNumber: randSerial(), Subject: pkix.Name{Organization: []string{"mesh bench"}},
			NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
			URIs: []*url.URL{u}, DNSNames: []string{name},
			KeyUsage:    x509.KeyUsageDigitalSignature,
			ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, key.Public(), caKey)
		if err != nil {
			return "", "", "", err
		}
		kder, err := x509.MarshalPKCS8PrivateKey(key)
		if err != nil {
			return "", "", "", err
		}
		base := filepath.Join(dir, strings.Split(name, ".")[0])
		certFile, keyFile, both = base+".crt", base+".key", base+".pem"
		certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
		keyPEM := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder})
		for f, b := range map[string][]byte{certFile: certPEM, keyFile: keyPEM, both: append(append([]byte(nil), certPEM...), keyPEM...)} {
			if err := os.WriteFile(f, b, 0o600); err != nil {
				return "", "", "", err
			}
		}
		return certFile, keyFile, both, nil
	}
	if p.ClientCert, p.ClientKey, p.ClientPEM, err = leaf(p.ClientName, p.ClientID); err != nil {
		return p, err
	}
	if p.ServerCert, p.ServerKey, p.ServerPEM, err = leaf(p.ServerName, p.ServerID); err != nil {
		return p, err
	}
	return p, nil
}

// randSerial is a random 127-bit serial; crypto/rand does not fail on
// Linux, and if it did the zero serial would only make the run's
// certificates alike.
func randSerial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return big.NewInt(1)
	}
	return n
}

func writePEM(name, typ string, der []byte) error {
	return os.WriteFile(name, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600)
}
