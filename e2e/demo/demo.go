// Package demo runs mesh end to end on the local cluster, narrating each
// step: the control plane, a node, the controller, two meshed pods whose
// sidecars get SVIDs attested by the API server, a request over mutual TLS,
// a request denied by policy, and the audit log verified. `make demo` runs
// it; so does a test.
package demo

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/mesh-dev/mesh/authz/audit"
	"github.com/mesh-dev/mesh/e2e/cluster"
	"github.com/mesh-dev/mesh/e2e/node"
	"github.com/mesh-dev/mesh/e2e/prereq"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// Config configures a demo run.
type Config struct {
	// Dir holds the cluster, the node and the controller's files.
	Dir string
	// Out receives the narration.
	Out io.Writer
}

const policy = `apiVersion: security.mesh.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: backend, namespace: shop}
spec:
  selector: {matchLabels: {app: backend}}
  action: ALLOW
  rules:
  - from: [{identities: ["spiffe://cluster.local/ns/shop/sa/frontend"]}]
    to: [{ports: [8080], methods: ["GET"], paths: ["/api/*"]}]
`

// Run runs the demo and returns when it is done, leaving nothing running.
func Run(ctx context.Context, cfg Config) error {
	say := func(format string, args ...any) { fmt.Fprintf(cfg.Out, "==> "+format+"\n", args...) }
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))

	say("starting the local control plane (etcd, kube-apiserver, controller-manager, scheduler)")
	c, err := cluster.New(cluster.Config{Dir: filepath.Join(cfg.Dir, "cluster"), Logger: quiet})
	if err != nil {
		return err
	}
	if err := c.Start(ctx); err != nil {
		return err
	}
	defer c.Stop()
	cs := c.Client()

	say("starting a node agent: pods become processes in network namespaces on bridge %s (%s)", node.Bridge, node.BridgeAddr)
	warn := slog.New(slog.NewTextHandler(cfg.Out, &slog.HandlerOptions{Level: slog.LevelWarn}))
	n, err := node.New(node.Config{Kube: cs, Dir: filepath.Join(cfg.Dir, "node"), CACertPath: c.CACertPath(), CAKeyPath: c.CAKeyPath(), Logger: warn})
	if err != nil {
		return err
	}
	nctx, stopNode := context.WithCancel(context.Background())
	nodeDone := make(chan error, 1)
	go func() { nodeDone <- n.Run(nctx) }()
	defer func() { stopNode(); <-nodeDone }()
	if err := waitFor(ctx, time.Minute, func() error { return exec.Command("ip", "addr", "show", node.Bridge).Run() }); err != nil {
		return fmt.Errorf("node network: %w", err)
	}

	for _, ns := range []string{"mesh-system", "shop"} {
		if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
			return err
		}
	}
	for _, sa := range []string{"frontend", "backend"} {
		if err := waitFor(ctx, time.Minute, func() error {
			_, err := cs.CoreV1().ServiceAccounts("shop").Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: sa}}, metav1.CreateOptions{})
			return err
		}); err != nil {
			return err
		}
	}

	say("starting mesh-controller: the CA (kept in Secret mesh-system/mesh-ca) and the identity service on %s:15012", node.NodeIP)
	bundlePath := filepath.Join(cfg.Dir, "bundle.pem")
	ctl := exec.Command(filepath.Join(prereq.BinDir(), "mesh-controller"), "--kubeconfig", c.KubeconfigPath(),
		"--identity-addr", node.NodeIP+":15012", "--metrics-addr", "127.0.0.1:0", "--write-bundle", bundlePath)
	var ctlLog bytes.Buffer
	ctl.Stdout, ctl.Stderr = &ctlLog, &ctlLog
	if err := ctl.Start(); err != nil {
		return fmt.Errorf("mesh-controller: %w", err)
	}
	defer func() { _ = ctl.Process.Kill(); _ = ctl.Wait() }()
	if err := waitFor(ctx, 30*time.Second, func() error {
		if _, err := os.Stat(bundlePath); err != nil {
			return err
		}
		conn, err := net.DialTimeout("tcp", node.NodeIP+":15012", time.Second)
		if err != nil {
			return err
		}
		return conn.Close()
	}); err != nil {
		return fmt.Errorf("mesh-controller did not come up: %w\n%s", err, ctlLog.String())
	}
	bundle, _ := os.ReadFile(bundlePath)
	for name, data := range map[string]map[string]string{"mesh-bundle": {"bundle.pem": string(bundle)}, "mesh-policies": {"policies.yaml": policy}} {
		if _, err := cs.CoreV1().ConfigMaps("shop").Create(ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: name}, Data: data}, metav1.CreateOptions{}); err != nil {
			return err
		}
	}

	say("creating pod shop/backend: the echo app with a mesh-proxy sidecar enforcing this policy:\n%s", indent(policy))
	backendIP, err := createMeshedPod(ctx, cs, "backend", "")
	if err != nil {
		return err
	}
	say("backend runs at %s as spiffe://cluster.local/ns/shop/sa/backend", backendIP)
	say("creating pod shop/frontend, whose proxy expects exactly that identity at %s:8080", backendIP)
	frontendIP, err := createMeshedPod(ctx, cs, "frontend", backendIP+":8080=spiffe://cluster.local/ns/shop/sa/backend")
	if err != nil {
		return err
	}
	say("frontend runs at %s", frontendIP)

	get := func(path string) (string, error) {
		out, err := exec.CommandContext(ctx, "ip", "netns", "exec", node.NetnsName("shop", "frontend"), "setpriv", "--reuid", "1000", "--regid", "1000", "--clear-groups", "--",
			filepath.Join(prereq.BinDir(), "mesh-e2e-echo"), "get", "http://"+backendIP+":8080"+path).CombinedOutput()
		return strings.TrimSpace(string(out)), err
	}
	say("the frontend app calls http://%s:8080/api/orders in plain HTTP; iptables sends it through both proxies", backendIP)
	var out string
	if err := waitFor(ctx, time.Minute, func() error {
		var err error
		out, err = get("/api/orders")
		if err != nil || !strings.Contains(out, "peer=spiffe://cluster.local/ns/shop/sa/frontend") {
			return fmt.Errorf("%q: %v", out, err)
		}
		return nil
	}); err != nil {
		return fmt.Errorf("request through the mesh: %w", err)
	}
	say("backend answered: %s", out)
	say("    (the peer identity was verified by mTLS and attested by the API server's TokenReview)")

	say("the frontend app calls /admin, which no ALLOW rule covers")
	out, err = get("/admin")
	if err == nil || !strings.Contains(out, "denied by policy shop/backend") {
		return fmt.Errorf("the denied request was not denied: %q, %v", out, err)
	}
	say("backend's proxy answered: %s", out)

	say("verifying backend's audit log, hash chain and all")
	var logPath string
	matches, _ := filepath.Glob(filepath.Join(cfg.Dir, "node", "pods", "*", "volumes", "audit", "audit.log"))
	for _, m := range matches {
		if b, _ := os.ReadFile(m); bytes.Contains(b, []byte(`"http.path":"/admin"`)) {
			logPath = m
		}
	}
	if logPath == "" {
		return fmt.Errorf("no audit record of the denial in %v", matches)
	}
	// The proxy signs the chain's head with its SVID key within a second
	// of a record (--audit-checkpoint-interval): wait until the denial is
	// anchored by a signed checkpoint.
	roots, err := x509bundle.Load(spiffeid.RequireTrustDomainFromString("cluster.local"), bundlePath)
	if err != nil {
		return err
	}
	var res audit.Result
	if err := waitFor(ctx, 30*time.Second, func() error {
		f, err := os.Open(logPath)
		if err != nil {
			return err
		}
		defer f.Close()
		res, err = audit.Verify(f, audit.VerifyOptions{Bundle: roots, Strict: true})
		return err
	}); err != nil {
		return fmt.Errorf("audit log %s: %w", logPath, err)
	}
	if len(res.Streams) == 0 {
		return fmt.Errorf("audit log %s: no stream", logPath)
	}
	say("audit log signed by %s, every record anchored by a signed checkpoint", res.Streams[0].Signer)
	rec, _ := os.ReadFile(logPath)
	say("audit log OK: %d record(s); the denial:\n%s", res.Records, indent(string(rec)))
	say("done: the cluster, node and controller are stopped, nothing is left running")
	return nil
}

// createMeshedPod creates an echo pod with mesh's sidecars, injected by
// hand (injection is the controller's job, still to come), and returns its
// IP once it runs.
func createMeshedPod(ctx context.Context, cs kubernetes.Interface, app, destinations string) (string, error) {
	root, proxyUID, appUID := int64(0), int64(1337), int64(1000)
	always := corev1.ContainerRestartPolicyAlways
	exp := int64(3600)
	fieldEnv := func(name, path string) corev1.EnvVar {
		return corev1.EnvVar{Name: name, ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: path}}}
	}
	args := []string{"run", "--identity-addr", node.NodeIP + ":15012", "--bundle", "/run/mesh/bundle/bundle.pem",
		"--token-file", "/var/run/secrets/mesh/tokens/identity-token", "--pod-labels", "app=" + app,
		"--audit-log", "/run/mesh/audit/audit.log", "--audit-checkpoint-interval", "1s"}
	if destinations != "" {
		args = append(args, "--destinations", destinations)
	} else {
		args = append(args, "--policies", "/run/mesh/policies/policies.yaml")
	}
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: app, Labels: map[string]string{"app": app}},
		Spec: corev1.PodSpec{
			ServiceAccountName:            app,
			TerminationGracePeriodSeconds: ptrTo(int64(2)),
			InitContainers: []corev1.Container{
				{
					Name: "mesh-init", Image: "mesh/mesh-proxy:dev", Args: []string{"init", "--proxy-uid", "1337"},
					SecurityContext: &corev1.SecurityContext{RunAsUser: &root, Capabilities: &corev1.Capabilities{Add: []corev1.Capability{"NET_ADMIN", "NET_RAW"}, Drop: []corev1.Capability{"ALL"}}},
				},
				{
					Name: "mesh-proxy", Image: "mesh/mesh-proxy:dev", Args: args, RestartPolicy: &always,
					Env: []corev1.EnvVar{fieldEnv("POD_NAME", "metadata.name"), fieldEnv("POD_NAMESPACE", "metadata.namespace"), fieldEnv("POD_IP", "status.podIP"),
						// The echo container's readiness probe, which the
						// kubelet now sends to the proxy's admin port (as the
						// injector will rewrite it): the proxy performs it.
						{Name: "MESH_APP_PROBES", Value: `{"/app-health/echo/readyz":{"httpGet":{"path":"/live","port":8080}}}`}},
					SecurityContext: &corev1.SecurityContext{RunAsUser: &proxyUID},
					VolumeMounts: []corev1.VolumeMount{
						{Name: "mesh-token", MountPath: "/var/run/secrets/mesh/tokens"},
						{Name: "mesh-bundle", MountPath: "/run/mesh/bundle"},
						{Name: "mesh-policies", MountPath: "/run/mesh/policies"},
						{Name: "audit", MountPath: "/run/mesh/audit"},
					},
				},
			},
			Containers: []corev1.Container{{
				Name: "echo", Image: "mesh-e2e/echo:dev",
				Env:             []corev1.EnvVar{fieldEnv("POD_NAME", "metadata.name")},
				SecurityContext: &corev1.SecurityContext{RunAsUser: &appUID},
				// Strict mTLS lets no plaintext in, not even the kubelet's:
				// its probe goes to the proxy, which probes the app.
				ReadinessProbe: &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/app-health/echo/readyz", Port: intstr.FromInt32(15020)}}},
			}},
			Volumes: []corev1.Volume{
				{Name: "mesh-token", VolumeSource: corev1.VolumeSource{Projected: &corev1.ProjectedVolumeSource{Sources: []corev1.VolumeProjection{{ServiceAccountToken: &corev1.ServiceAccountTokenProjection{Audience: "identity.mesh.dev", ExpirationSeconds: &exp, Path: "identity-token"}}}}}},
				{Name: "mesh-bundle", VolumeSource: corev1.VolumeSource{ConfigMap: &corev1.ConfigMapVolumeSource{LocalObjectReference: corev1.LocalObjectReference{Name: "mesh-bundle"}}}},
				{Name: "mesh-policies", VolumeSource: corev1.VolumeSource{ConfigMap: &corev1.ConfigMapVolumeSource{LocalObjectReference: corev1.LocalObjectReference{Name: "mesh-policies"}}}},
				{Name: "audit", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}},
			},
		},
	}
	if _, err := cs.CoreV1().Pods("shop").Create(ctx, p, metav1.CreateOptions{}); err != nil {
		return "", err
	}
	var ip string
	err := waitFor(ctx, 2*time.Minute, func() error {
		got, err := cs.CoreV1().Pods("shop").Get(ctx, app, metav1.GetOptions{})
		if err != nil {
			return err
		}
		// Ready: the kubelet's readiness probe, rewritten to the proxy's
		// admin port, passed (the proxy probed the app).
		if got.Status.PodIP == "" || len(got.Status.ContainerStatuses) == 0 || got.Status.ContainerStatuses[0].State.Running == nil || !got.Status.ContainerStatuses[0].Ready {
			return fmt.Errorf("pod %s not running: %+v", app, got.Status)
		}
		ip = got.Status.PodIP
		return nil
	})
	return ip, err
}

func waitFor(ctx context.Context, bound time.Duration, f func() error) error {
	deadline := time.Now().Add(bound)
	for {
		err := f()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(250 * time.Millisecond):
		}
	}
}

func indent(s string) string {
	return "    " + strings.ReplaceAll(strings.TrimRight(s, "\n"), "\n", "\n    ")
}

func ptrTo[T any](v T) *T { return &v }
