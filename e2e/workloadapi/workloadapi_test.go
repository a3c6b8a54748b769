// Package workloadapi_test runs the SPIFFE Workload API the sidecar shares
// with its pod (mesh.dev/workload-api: enabled) on the local cluster: a pod
// injected by package inject, with a real controller, node agent and
// proxy, whose SPIFFE-native app (e2e/cmd/mesh-e2e-spiffe, go-spiffe's own
// client) gets an SVID of the pod's identity with a key of its own, not
// the proxy's, while containers of the same pod running as UIDs the
// injector did not declare are refused.
package workloadapi_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	jsonpatch "gopkg.in/evanphx/json-patch.v4"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/mesh-dev/mesh/authz/api/v1alpha1/crdtest"
	"github.com/mesh-dev/mesh/controlplane/trustbundle"
	"github.com/mesh-dev/mesh/e2e/clustertest"
	"github.com/mesh-dev/mesh/e2e/meshtest"
	"github.com/mesh-dev/mesh/e2e/node"
	"github.com/mesh-dev/mesh/identity/appsvid"
	"github.com/mesh-dev/mesh/inject"
	"github.com/mesh-dev/mesh/proxy"
)

func TestMain(m *testing.M) { os.Exit(clustertest.Run(m)) }

const (
	ns     = "spiffe"
	appUID = 1000
)

var identityAddr = fmt.Sprintf("%s:%d", node.NodeIP, meshtest.IdentityPort)

// result is a line of mesh-e2e-spiffe's output.
type result struct {
	SPIFFEID    string `json:"spiffeID"`
	Serial      string `json:"serial"`
	PublicKey   []byte `json:"publicKey"`
	KeyMatches  bool   `json:"keyMatches"`
	AppMarked   bool   `json:"appMarked"`
	BundleRoots int    `json:"bundleRoots"`
	Code        string `json:"code"`
	Error       string `json:"error"`
}

// TestWorkloadAPI: the app gets the SVID of its ServiceAccount, with the
// key of the certificate the proxy serves, and its renewal; a container
// as another UID and one as root are refused; the socket is not
// world-writable.
func TestWorkloadAPI(t *testing.T) {
	c := clustertest.Get(t)
	ctx := t.Context()
	cs := c.Client()
	// The controller pushes a policy only once its policy informer has
	// synced, and a proxy without one is not ready: the app containers
	// start after the sidecar is.
	crdtest.Install(t, c)
	dir := t.TempDir()
	nodeDir := filepath.Join(dir, "node")
	stopNode, err := meshtest.StartNode(c, nodeDir, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(stopNode)
	if err := meshtest.EnsureNamespace(ctx, cs, "mesh-system"); err != nil {
		t.Fatal(err)
	}
	if err := meshtest.EnsureNamespace(ctx, cs, ns, "app"); err != nil {
		t.Fatal(err)
	}
	// A short SVID lifetime: the proxy renews within the test, and the app
	// must see it.
	ctl, err := meshtest.StartController(c, "ctl", identityAddr, "--svid-ttl", "30s", "--max-svid-ttl", "40s")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctl.Kill()
		if t.Failed() {
			t.Logf("controller log:\n%s", ctl.Log())
		}
	})
	if err := meshtest.WaitFor(ctx, time.Minute, func() error {
		_, err := cs.CoreV1().ConfigMaps(ns).Get(ctx, trustbundle.ConfigMapName, metav1.GetOptions{})
		return err
	}); err != nil {
		t.Fatalf("no %s ConfigMap in %s: %v", trustbundle.ConfigMapName, ns, err)
	}

	pod := injected(t)
	// Two intruders, added after injection: they mount the socket's
	// directory as the app does, but run as UIDs the injector did not
	// declare. The file system stops 1001; root passes it
	// (CAP_DAC_OVERRIDE) and the proxy's SO_PEERCRED check stops it.
	for name, uid := range map[string]int64{"intruder": 1001, "root": 0} {
		pod.Spec.Containers = append(pod.Spec.Containers, corev1.Container{
			Name: name, Image: "mesh/mesh-e2e-spiffe:dev", Args: []string{"fetch"},
			SecurityContext: &corev1.SecurityContext{RunAsUser: ptrTo(uid)},
			Env:             []corev1.EnvVar{{Name: inject.EndpointSocketEnv, Value: "unix://" + inject.WorkloadAPISocket}},
			VolumeMounts:    []corev1.VolumeMount{{Name: "mesh-workload-api", MountPath: inject.WorkloadAPIDir, ReadOnly: true}},
		})
	}
	ip, err := meshtest.CreateRunning(ctx, cs, pod)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cs.CoreV1().Pods(ns).Delete(context.Background(), pod.Name, metav1.DeleteOptions{GracePeriodSeconds: ptrTo(int64(0))})
		if t.Failed() {
			for _, ctr := range []string{"mesh-proxy", "app", "intruder", "root"} {
				t.Logf("%s log:\n%s", ctr, logs(context.Background(), cs, pod.Name, ctr))
			}
		}
	})

	want := spiffeid.RequireFromString("spiffe://cluster.local/ns/" + ns + "/sa/app")
	first := lines(t, cs, pod.Name, "app", 1)[0]
	if first.SPIFFEID != want.String() || !first.KeyMatches || !first.AppMarked || first.BundleRoots < 1 {
		t.Fatalf("the app got %+v, want %s with its key, the CA's app mark and the bundle", first, want)
	}
	checkOwnKey(t, ip, want, first)
	t.Logf("the app has %s, serial %s, with a key of its own", first.SPIFFEID, first.Serial)

	// The socket, as the proxy left it in the pod's emptyDir.
	fi, err := os.Lstat(filepath.Join(nodeDir, "pods", podUID(t, cs, pod.Name), "volumes", "mesh-workload-api", "socket"))
	if err != nil {
		t.Fatal(err)
	}
	if st := fi.Sys().(*syscall.Stat_t); fi.Mode().Type() != os.ModeSocket || fi.Mode().Perm()&0o007 != 0 || st.Uid != inject.DefaultProxyUID {
		t.Errorf("socket %v owned by %d: want a socket of the proxy's (%d), nothing for others", fi.Mode(), st.Uid, inject.DefaultProxyUID)
	}

	for _, tc := range []struct{ container, code, msg string }{
		{"intruder", "Unavailable", "permission denied"},
		{"root", "PermissionDenied", "uid 0 may not use this Workload API"},
	} {
		got := lines(t, cs, pod.Name, tc.container, 1)[0]
		if got.SPIFFEID != "" || got.Code != tc.code || !strings.Contains(got.Error, tc.msg) {
			t.Errorf("%s got %+v, want %s with %q", tc.container, got, tc.code, tc.msg)
		}
		t.Logf("%s refused: %s", tc.container, got.Error)
	}

	// Renewal: the proxy renews the app's SVID at about half of 30s; the
	// app's stream delivers the new one, with a new key, again not the
	// proxy's.
	second := lines(t, cs, pod.Name, "app", 2)[1]
	if second.SPIFFEID != want.String() || !second.KeyMatches || !second.AppMarked || second.Serial == first.Serial || bytes.Equal(second.PublicKey, first.PublicKey) {
		t.Fatalf("after renewal the app has %+v (before: serial %s)", second, first.Serial)
	}
	checkOwnKey(t, ip, want, second)
	t.Logf("renewed: serial %s", second.Serial)
}

// injected is the app's pod as the injector mutates it: its only
// container, mesh-e2e-spiffe watch as uid 1000, and the annotation.
func injected(t *testing.T) *corev1.Pod {
	t.Helper()
	in, err := inject.New(inject.Config{ProxyImage: "mesh/mesh-proxy:dev", IdentityAddr: identityAddr}, inject.Mesh{
		TrustDomain:  spiffeid.RequireTrustDomainFromString("cluster.local"),
		ControllerID: spiffeid.RequireFromString("spiffe://cluster.local/ns/mesh-system/sa/mesh-controller"),
		Namespace:    "mesh-system", Version: "e2e",
	})
	if err != nil {
		t.Fatal(err)
	}
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "app", Namespace: ns, Annotations: map[string]string{inject.WorkloadAPI: inject.Enabled}},
		Spec: corev1.PodSpec{
			ServiceAccountName: "app", TerminationGracePeriodSeconds: ptrTo(int64(2)),
			Containers: []corev1.Container{{
				Name: "app", Image: "mesh/mesh-e2e-spiffe:dev", Args: []string{"watch"},
				SecurityContext: &corev1.SecurityContext{RunAsUser: ptrTo(int64(appUID))},
			}},
		},
	}
	res, err := in.Inject(pod, map[string]string{inject.InjectKey: inject.Enabled})
	if err != nil || res.Patch == nil {
		t.Fatalf("inject: %v %+v", err, res)
	}
	orig, err := json.Marshal(pod)
	if err != nil {
		t.Fatal(err)
	}
	p, err := jsonpatch.DecodePatch(res.Patch)
	if err != nil {
		t.Fatal(err)
	}
	out, err := p.Apply(orig)
	if err != nil {
		t.Fatal(err)
	}
	var got corev1.Pod
	if err := json.Unmarshal(out, &got); err != nil {
		t.Fatal(err)
	}
	return &got
}

// checkOwnKey: the proxy presents a certificate for the same SPIFFE ID on
// the pod's inbound port, with another key than the app's: the proxy's
// key, which signs its audit checkpoints, is not the one the app holds.
func checkOwnKey(t *testing.T, ip string, want spiffeid.ID, r result) {
	t.Helper()
	var served *x509.Certificate
	conf := &tls.Config{
		MinVersion: tls.VersionTLS13, NextProtos: []string{proxy.ALPN},
		// The test has no SVID: it reads the proxy's certificate and is
		// refused after.
		InsecureSkipVerify: true,
		VerifyConnection: func(cs tls.ConnectionState) error {
			served = cs.PeerCertificates[0]
			return nil
		},
	}
	if err := meshtest.WaitFor(t.Context(), 30*time.Second, func() error {
		conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", net.JoinHostPort(ip, "8080"), conf)
		if err == nil {
			conn.Close()
		}
		if served == nil {
			return fmt.Errorf("no certificate from the proxy: %v", err)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if len(served.URIs) != 1 || served.URIs[0].String() != want.String() {
		t.Errorf("the proxy presents %v, want %s", served.URIs, want)
	}
	pub, err := x509.MarshalPKIXPublicKey(served.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Equal(pub, r.PublicKey) || served.SerialNumber.Text(16) == r.Serial {
		t.Errorf("the proxy presents the app's own SVID (serial %s): the app holds the proxy's key", r.Serial)
	}
	if appsvid.Marked(served) {
		t.Errorf("the proxy presents an SVID with the app mark (serial %s)", served.SerialNumber.Text(16))
	}
}

// lines waits (bounded) for n JSON lines in container's log and returns
// them.
func lines(t *testing.T, cs kubernetes.Interface, pod, container string, n int) []result {
	t.Helper()
	var out []result
	err := meshtest.WaitFor(t.Context(), 90*time.Second, func() error {
		out = out[:0]
		sc := bufio.NewScanner(strings.NewReader(logs(t.Context(), cs, pod, container)))
		for sc.Scan() {
			var r result
			if json.Unmarshal(sc.Bytes(), &r) == nil {
				out = append(out, r)
			}
		}
		if len(out) < n {
			return fmt.Errorf("%d lines from %s, want %d", len(out), container, n)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func logs(ctx context.Context, cs kubernetes.Interface, pod, container string) string {
	b, err := cs.CoreV1().Pods(ns).GetLogs(pod, &corev1.PodLogOptions{Container: container}).DoRaw(ctx)
	if err != nil {
		return "(logs: " + err.Error() + ")"
	}
	return string(b)
}

func podUID(t *testing.T, cs kubernetes.Interface, name string) string {
	t.Helper()
	p, err := cs.CoreV1().Pods(ns).Get(t.Context(), name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return string(p.UID)
}

func ptrTo[T any](v T) *T { return &v }
