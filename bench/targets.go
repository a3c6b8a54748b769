package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"text/template"
	"time"
)

// Fixed loopback ports: one pair runs at a time.
const (
	backendHTTP = "127.0.0.1:21080"
	backendGRPC = "127.0.0.1:21079"
	clientAddr  = "127.0.0.1:21101" // the client-side proxy, plaintext
	serverAddr  = "127.0.0.1:21102" // the server-side proxy, mTLS
)

// path is what a pair carries: HTTP/1.1 to the HTTP backend, or gRPC
// (HTTP/2) to the gRPC one.
type path string

const (
	pathHTTP path = "http"
	pathGRPC path = "grpc"
)

// target is one way to get from the load generator to the backend.
type target struct {
	name string
	// start runs the pair for p; nil for direct.
	start func(ctx context.Context, e *env, p path) (*pair, error)
	// only, if set, names the scenarios the target is measured in; a
	// reference target is not measured in every scenario, to keep the
	// run short.
	only []string
}

// pair is a running client-side and server-side proxy.
type pair struct {
	client, server *proc
	// alpn is what a client of the server side offers in TLS.
	alpn []string
}

func (p *pair) stop() {
	if p == nil {
		return
	}
	p.client.stop()
	p.server.stop()
}

func pickTargets(list string, e *env) ([]target, error) {
	all := map[string]target{
		"direct": {name: "direct"},
		"mesh":   {name: "mesh", start: startMesh},
		// The same binary carrying TCP opaque, authorized per connection:
		// the floor of mesh's HTTP path (Go's TLS, runtime and copying),
		// for the CPU and latency goals.
		"mesh-tcp": {name: "mesh-tcp", start: startMeshTCP, only: []string{"latency", "max"}},
		"haproxy":  {name: "haproxy", start: startHAProxy},
		"nginx":    {name: "nginx", start: startNGINX},
	}
	var out []target
	for _, n := range strings.Split(list, ",") {
		t, ok := all[strings.TrimSpace(n)]
		if !ok {
			return nil, fmt.Errorf("bench: -targets: unknown target %q (direct, mesh, mesh-tcp, haproxy, nginx)", n)
		}
		if (t.name == "haproxy" && !e.haveHAProxy) || (t.name == "nginx" && !e.haveNGINX) {
			e.meta.Notes = append(e.meta.Notes, t.name+" is not installed: skipped")
			continue
		}
		out = append(out, t)
	}
	return out, nil
}

// proc is a process the harness started, pinned with taskset.
type proc struct {
	name string
	cmd  *exec.Cmd
	pid  int
	log  string
	done chan struct{}
}

func startProc(ctx context.Context, e *env, name string, core int, extraEnv []string, argv ...string) (*proc, error) {
	if e.haveTaskset {
		argv = append([]string{"taskset", "-c", strconv.Itoa(core)}, argv...)
	}
	logName := filepath.Join(e.work, "logs", name+".log")
	if err := os.MkdirAll(filepath.Dir(logName), 0o755); err != nil {
		return nil, err
	}
	f, err := os.Create(logName)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.Env = append(os.Environ(), extraEnv...)
	// Its own process group: a ^C to the harness is the harness's to
	// pass on, in order.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		f.Close()
		return nil, fmt.Errorf("bench: start %s: %w", name, err)
	}
	p := &proc{name: name, cmd: cmd, pid: cmd.Process.Pid, log: logName, done: make(chan struct{})}
	go func() { cmd.Wait(); f.Close(); close(p.done) }()
	return p, nil
}

// stop sends SIGTERM, then SIGKILL after 10 seconds, and waits.
func (p *proc) stop() {
	if p == nil {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// waitListening waits until addr accepts connections, or the process
// ends, for up to 15 seconds.
func waitListening(ctx context.Context, p *proc, addrs ...string) error {
	deadline := time.Now().Add(15 * time.Second)
	for _, addr := range addrs {
		for {
			c, err := net.DialTimeout("tcp", addr, time.Second)
			if err == nil {
				c.Close()
				break
			}
			if p.exited() {
				tail, _ := os.ReadFile(p.log)
				return fmt.Errorf("bench: %s exited before listening on %s:\n%s", p.name, addr, lastLines(tail, 20))
			}
			if time.Now().After(deadline) || ctx.Err() != nil {
				return fmt.Errorf("bench: %s not listening on %s: %v", p.name, addr, err)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	return nil
}

func lastLines(b []byte, n int) string {
	lines := bytes.Split(bytes.TrimSpace(b), []byte("\n"))
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return string(bytes.Join(lines, []byte("\n")))
}

// startPair starts the server side, then the client side, with the
// configurations conf made, and waits for both to listen.
func startPair(ctx context.Context, e *env, name string, p path, argv func(side, conf string) ([]string, []string), conf func(side string) (string, error)) (*pair, error) {
	pr := &pair{}
	for _, side := range []string{"server", "client"} {
		file, err := conf(side)
		if err != nil {
			pr.stop()
			return nil, err
		}
		args, extraEnv := argv(side, file)
		pc, err := startProc(ctx, e, fmt.Sprintf("%s-%s-%s", name, p, side), e.proxyCore, extraEnv, args...)
		if err != nil {
			pr.stop()
			return nil, err
		}
		addr := serverAddr
		if side == "client" {
			pr.client, addr = pc, clientAddr
		} else {
			pr.server = pc
		}
		if err := waitListening(ctx, pc, addr); err != nil {
			pr.stop()
			return nil, err
		}
	}
	return pr, nil
}

// render writes a configuration from a template.
func render(e *env, name, text string, data any) (string, error) {
	t, err := template.New(name).Parse(text)
	if err != nil {
		return "", fmt.Errorf("bench: template %s: %w", name, err)
	}
	var b bytes.Buffer
	if err := t.Execute(&b, data); err != nil {
		return "", fmt.Errorf("bench: template %s: %w", name, err)
	}
	file := filepath.Join(e.work, "conf", name)
	if err := os.MkdirAll(filepath.Dir(file), 0o755); err != nil {
		return "", err
	}
	return file, os.WriteFile(file, b.Bytes(), 0o644)
}

// confData is what every configuration template reads.
type confData struct {
	PKI                     pkiFiles
	Client, Server, Backend string
	GRPC                    bool
	// Opaque: both mesh proxies carry TCP as it is (mesh-tcp).
	Opaque bool
	Work   string
}

func newConfData(e *env, p path) confData {
	d := confData{PKI: e.pki, Client: clientAddr, Server: serverAddr, Backend: backendHTTP, GRPC: p == pathGRPC, Work: e.work}
	if p == pathGRPC {
		d.Backend = backendGRPC
	}
	return d
}

func startMesh(ctx context.Context, e *env, p path) (*pair, error) {
	return startMeshPair(ctx, e, p, "mesh", false)
}

func startMeshTCP(ctx context.Context, e *env, p path) (*pair, error) {
	return startMeshPair(ctx, e, p, "mesh-tcp", true)
}

func startMeshPair(ctx context.Context, e *env, p path, name string, opaque bool) (*pair, error) {
	d := newConfData(e, p)
	d.Opaque = opaque
	pr, err := startPair(ctx, e, name, p,
		func(side, conf string) ([]string, []string) {
			// One P: the same single worker as HAProxy's and NGINX's.
			return []string{e.meshProxy, "standalone", "--config", conf}, []string{"GOMAXPROCS=1"}
		},
		func(side string) (string, error) {
			if side == "server" {
				if _, err := render(e, "mesh-policy.yaml", meshPolicy, d); err != nil {
					return "", err
				}
				return render(e, fmt.Sprintf("%s-%s-server.yaml", name, p), meshServer, d)
			}
			return render(e, fmt.Sprintf("%s-%s-client.yaml", name, p), meshClient, d)
		})
	if pr != nil {
		pr.alpn = []string{"mesh/1"}
	}
	return pr, err
}

const meshPolicy = `apiVersion: security.mesh.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: bench-server, namespace: bench}
spec:
  action: ALLOW
  rules:
  - from: [{identities: ["{{.PKI.ClientID}}"]}]
`

const meshServer = `trustDomain: bench.local
identity: {cert: {{.PKI.ServerCert}}, key: {{.PKI.ServerKey}}, bundle: {{.PKI.CA}}}
workload: {namespace: bench, name: server}
inbound:
  listen: "{{.Server}}"
  forward: "{{.Backend}}"
  protocol: {{if .Opaque}}opaque{{else if .GRPC}}grpc{{else}}http{{end}}
  policy: {{.Work}}/conf/mesh-policy.yaml
  defaultPolicy: deny
auditLog: {{.Work}}/logs/mesh-audit.log
`

const meshClient = `trustDomain: bench.local
identity: {cert: {{.PKI.ClientCert}}, key: {{.PKI.ClientKey}}, bundle: {{.PKI.CA}}}
outbound:
- {listen: "{{.Client}}", destination: "{{.Server}}", peer: "{{.PKI.ServerID}}"{{if .Opaque}}, protocol: opaque{{end}}}
auditLog: {{.Work}}/logs/mesh-audit.log
`

func startHAProxy(ctx context.Context, e *env, p path) (*pair, error) {
	d := newConfData(e, p)
	pr, err := startPair(ctx, e, "haproxy", p,
		func(side, conf string) ([]string, []string) { return []string{e.haproxy, "-db", "-f", conf}, nil },
		func(side string) (string, error) {
			tmpl := haproxyClient
			if side == "server" {
				tmpl = haproxyServer
			}
			return render(e, fmt.Sprintf("haproxy-%s-%s.cfg", p, side), haproxyGlobal+tmpl, d)
		})
	if pr != nil && p == pathGRPC {
		pr.alpn = []string{"h2"}
	}
	return pr, err
}

// HAProxy: one thread, TLS 1.3, the peer's chain verified against the CA
// and its name checked, server connections reused across client
// connections (http-reuse always).
const haproxyGlobal = `global
  nbthread 1
  maxconn 8000
  log stderr format raw local0 err
defaults
  mode http
  log global
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  timeout http-keep-alive 60s
`

const haproxyClient = `frontend in
  bind {{.Client}}{{if .GRPC}} proto h2{{end}}
  default_backend out
backend out
  http-reuse always
  server server {{.Server}} ssl verify required ca-file {{.PKI.CA}} crt {{.PKI.ClientPEM}} verifyhost {{.PKI.ServerName}} ssl-min-ver TLSv1.3{{if .GRPC}} alpn h2{{end}}
`

const haproxyServer = `frontend in
  bind {{.Server}} ssl crt {{.PKI.ServerPEM}} ca-file {{.PKI.CA}} verify required ssl-min-ver TLSv1.3{{if .GRPC}} alpn h2{{end}}
  default_backend app
backend app
  http-reuse always
  server app {{.Backend}}{{if .GRPC}} proto h2{{end}}
`

func startNGINX(ctx context.Context, e *env, p path) (*pair, error) {
	d := newConfData(e, p)
	pr, err := startPair(ctx, e, "nginx", p,
		func(side, conf string) ([]string, []string) {
			prefix := filepath.Join(e.work, "nginx-"+side)
			return []string{e.nginx, "-p", prefix, "-c", conf, "-e", filepath.Join(e.work, "logs", "nginx-"+side+"-error.log")}, nil
		},
		func(side string) (string, error) {
			if err := os.MkdirAll(filepath.Join(e.work, "nginx-"+side), 0o755); err != nil {
				return "", err
			}
			tmpl := nginxClient
			if side == "server" {
				tmpl = nginxServer
			}
			return render(e, fmt.Sprintf("nginx-%s-%s.conf", p, side), strings.ReplaceAll(nginxMain, "SIDE", side)+tmpl+"}\n", d)
		})
	if pr != nil && p == pathGRPC {
		pr.alpn = []string{"h2"}
	}
	return pr, err
}

// NGINX: one process (no master), TLS 1.3, the peer's chain verified and
// its name checked, upstream connections kept alive and reused.
const nginxMain = `daemon off;
master_process off;
worker_processes 1;
pid {{.Work}}/nginx-SIDE/nginx.pid;
error_log {{.Work}}/logs/nginx-SIDE-error.log warn;
events { worker_connections 8000; }
http {
  access_log off;
  client_body_temp_path {{.Work}}/nginx-SIDE/body;
  proxy_temp_path {{.Work}}/nginx-SIDE/proxy;
  fastcgi_temp_path {{.Work}}/nginx-SIDE/fastcgi;
  uwsgi_temp_path {{.Work}}/nginx-SIDE/uwsgi;
  scgi_temp_path {{.Work}}/nginx-SIDE/scgi;
  keepalive_requests 1000000;
  keepalive_timeout 60s;
  proxy_max_temp_file_size 0;
  # A long-lived gRPC stream is one request body: NGINX's default 1 MiB
  # limit resets it (INTERNAL_ERROR) after 1 MiB of messages.
  client_max_body_size 0;
`

const nginxClient = `  upstream server { server {{.Server}}; keepalive 64; keepalive_requests 1000000; }
  server {
    listen {{.Client}}{{if .GRPC}} http2{{end}};
    location / {
{{- if .GRPC}}
      grpc_pass grpcs://server;
      grpc_ssl_certificate {{.PKI.ClientCert}};
      grpc_ssl_certificate_key {{.PKI.ClientKey}};
      grpc_ssl_trusted_certificate {{.PKI.CA}};
      grpc_ssl_verify on;
      grpc_ssl_name {{.PKI.ServerName}};
      grpc_ssl_protocols TLSv1.3;
{{- else}}
      proxy_pass https://server;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_ssl_certificate {{.PKI.ClientCert}};
      proxy_ssl_certificate_key {{.PKI.ClientKey}};
      proxy_ssl_trusted_certificate {{.PKI.CA}};
      proxy_ssl_verify on;
      proxy_ssl_name {{.PKI.ServerName}};
      proxy_ssl_protocols TLSv1.3;
      proxy_ssl_session_reuse on;
{{- end}}
    }
  }
`

const nginxServer = `  upstream app { server {{.Backend}}; keepalive 64; keepalive_requests 1000000; }
  server {
    listen {{.Server}} ssl{{if .GRPC}} http2{{end}};
    ssl_certificate {{.PKI.ServerCert}};
    ssl_certificate_key {{.PKI.ServerKey}};
    ssl_client_certificate {{.PKI.CA}};
    ssl_verify_client on;
    ssl_protocols TLSv1.3;
    location / {
{{- if .GRPC}}
      grpc_pass grpc://app;
{{- else}}
      proxy_pass http://app;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
{{- end}}
    }
  }
`

// startBackend runs fortio's server, the HTTP/1.1 echo, on the load
// generator's core.
func startBackend(ctx context.Context, e *env) (*proc, error) {
	p, err := startProc(ctx, e, "backend", e.loadCore, nil, e.fortio, "server",
		"-http-port", backendHTTP, "-grpc-port", "disabled", "-redirect-port", "disabled",
		"-maxpayloadsizekb", "1024", "-loglevel", "error")
	if err != nil {
		return nil, err
	}
	if err := waitListening(ctx, p, backendHTTP); err != nil {
		p.stop()
		return nil, err
	}
	return p, nil
}

// checkPortsFree fails early if another program holds the harness's ports.
func checkPortsFree() error {
	var errs []error
	for _, a := range []string{backendHTTP, backendGRPC, clientAddr, serverAddr} {
		ln, err := net.Listen("tcp", a)
		if err != nil {
			errs = append(errs, fmt.Errorf("bench: port %s is taken: %w", a, err))
			continue
		}
		ln.Close()
	}
	return errors.Join(errs...)
}
