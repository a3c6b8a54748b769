// Package check_test runs `meshctl check` against a helm-installed mesh
// on the local cluster: `--pre` on the fresh cluster, then the checks with
// an injected application, with the controller scaled to 0 (they must
// fail, naming the controller and the webhook) and back (they must pass).
package check_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/mesh-dev/mesh/e2e/clustertest"
	"github.com/mesh-dev/mesh/e2e/helminstall"
	"github.com/mesh-dev/mesh/e2e/meshtest"
	"github.com/mesh-dev/mesh/meshctl"
	"github.com/mesh-dev/mesh/proxy"
)

func TestMain(m *testing.M) { os.Exit(clustertest.Run(m)) }

const (
	system = helminstall.Namespace
	appNS  = "shop"
)

// TestCheck: check --pre, install, an injected app, check passes; the
// controller at 0: check fails on the controller and webhook lines; back
// to 2: check passes again.
func TestCheck(t *testing.T) {
	c := clustertest.Get(t)
	m := helminstall.Start(t, c)
	ctx := t.Context()

	// Before install: every line passes.
	out, code := runMeshctl(t, m, "check", "--pre")
	t.Logf("meshctl check --pre:\n%s", out)
	if code != 0 {
		t.Fatalf("check --pre exited %d", code)
	}
	lines := checkLines(out)
	if len(lines) < 10 {
		t.Fatalf("check --pre printed %d check lines, want the API, sidecar, RBAC and conflict checks", len(lines))
	}
	for _, l := range lines {
		if !strings.HasPrefix(l, "✔ ") {
			t.Errorf("check --pre: %q does not pass", l)
		}
	}
	for _, want := range []string{"✔ can reach the Kubernetes API", "✔ native sidecars work", "✔ can create CustomResourceDefinitions", "✔ can create Deployments in --mesh-namespace", "✔ no mesh webhook configurations exist yet"} {
		if !hasLine(lines, want) {
			t.Errorf("check --pre: no line %q", want)
		}
	}

	m.Install(t)
	// Two echo pods in a namespace labelled for injection.
	m.Namespace(t, appNS, true)
	m.DeployEcho(t, appNS, helminstall.EchoApp{Name: "echo", Replicas: 2})
	// A policy the proxies must enforce: check waits for its status to
	// count both.
	m.Apply(t, `apiVersion: security.mesh.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: echo-from-shop, namespace: `+appNS+`}
spec:
  selector: {matchLabels: {app: echo}}
  action: ALLOW
  rules:
    - from: [{namespaces: [`+appNS+`]}]
`)

	// Installed and meshed: every check passes, the data plane's on the
	// app's pods.
	out, code = runMeshctl(t, m, "check", "--wait", "2m")
	t.Logf("meshctl check --wait 2m:\n%s", out)
	if code != 0 {
		t.Fatalf("check --wait 2m exited %d", code)
	}
	lines = checkLines(out)
	for _, l := range lines {
		if !strings.HasPrefix(l, "✔ ") {
			t.Errorf("check: %q does not pass", l)
		}
	}
	for _, want := range []string{
		"✔ the controller Deployment has a ready replica (2/2 replicas ready)",
		"✔ the policy webhook refuses an invalid AuthorizationPolicy (server-side dry run) (refused by the webhook)",
		"✔ the injector adds the proxy to a pod (server-side dry run) (in namespace " + appNS + ")",
		"✔ every meshed pod's proxy is ready and serves a valid SVID (2 pods)",
		"✔ every proxy trusts every root of the CA (2 proxies, 1 root)",
		"✔ every proxy enforces the policy the controller computes for its pod (2 proxies)",
		"✔ every policy's status counts its current generation enforced (1 policy)",
	} {
		if !hasLine(lines, want) {
			t.Errorf("check: no line %q", want)
		}
	}
	rep := checkJSON(t, m)
	if !rep.Success || rep.Pre || len(rep.Categories) != 6 {
		t.Errorf("check -o json: success %t, pre %t, %d categories; want true, false, 6", rep.Success, rep.Pre, len(rep.Categories))
	}

	// policy show: each pod's proxy enforces the one policy, as the
	// controller computes it.
	shown := policyShow(t, m, 0)
	for _, r := range shown {
		if !r.Current || r.Proxy == nil || !slices.Equal(r.Proxy.Policies, []proxy.PolicyRef{{Namespace: appNS, Name: "echo-from-shop", Generation: 1}}) {
			t.Errorf("policy show: %+v, want shop/echo-from-shop at generation 1, current", r)
		}
	}
	if len(shown) != 2 {
		t.Errorf("policy show deploy/echo: %d pods, want 2", len(shown))
	}

	// The controller at 0: the controller and webhook lines fail.
	scale(t, m, 0)
	// Gone, not only terminating: the node agent deletes a pod object once
	// its processes have exited, and a controller still running would push
	// the deletion below to the proxies.
	if err := meshtest.WaitFor(ctx, 2*time.Minute, func() error {
		pods, err := m.Kube.CoreV1().Pods(helminstall.Namespace).List(ctx, metav1.ListOptions{LabelSelector: helminstall.ControllerSelector})
		if err != nil {
			return err
		}
		if n := len(pods.Items); n > 0 {
			return fmt.Errorf("%d controller pods left", n)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	// A policy deleted meanwhile (deletes pass no webhook) stays in force
	// in the proxies until a controller returns: check names each of them.
	m.MustRun(t, "kubectl", "-n", appNS, "delete", "authorizationpolicy", "echo-from-shop")
	out, code = runMeshctl(t, m, "check")
	t.Logf("meshctl check with the controller at 0:\n%s", out)
	if code != 1 {
		t.Errorf("check with the controller at 0 exited %d, want 1", code)
	}
	lines = checkLines(out)
	for _, want := range []string{
		"✖ the controller Deployment has a ready replica: Deployment mesh-system/mesh-controller: 0/0 replicas ready",
		"✖ the leader Lease is held by a live controller pod",
		"✖ the policy webhook refuses an invalid AuthorizationPolicy (server-side dry run)",
		"✖ the injector adds the proxy to a pod (server-side dry run)",
		"✖ every proxy enforces the policy the controller computes for its pod: 2 of 2 proxies; lagging: " + appNS + "/echo-",
	} {
		if !hasLine(lines, want) {
			t.Errorf("check with the controller at 0: no line starting %q", want)
		}
	}
	for _, l := range lines {
		if strings.Contains(l, "every proxy enforces the policy") && strings.Count(l, "(still enforces "+appNS+"/echo-from-shop; version ") != 2 {
			t.Errorf("check with the controller at 0: the policy line does not say that both proxies still enforce the deleted policy: %q", l)
		}
	}
	if !strings.Contains(out, "    hint: kubectl -n "+system+" get deploy,pods") {
		t.Errorf("check with the controller at 0: no hint naming the mesh namespace")
	}
	out, code = runMeshctl(t, m, "policy", "show", "-n", appNS, "deploy/echo")
	t.Logf("meshctl policy show with the controller at 0:\n%s", out)
	if code != 1 || strings.Count(out, ": still enforces "+appNS+"/echo-from-shop; version ") != 2 {
		t.Errorf("policy show with the controller at 0 exited %d, want 1 and both pods said to still enforce the deleted policy", code)
	}
	rep = checkJSON(t, m)
	if rep.Success || resultOf(rep, "the controller Deployment has a ready replica") != meshctl.ResultError {
		t.Errorf("check -o json with the controller at 0: success %t, controller %q", rep.Success, resultOf(rep, "the controller Deployment has a ready replica"))
	}

	// Back to 2: passes again once it is up.
	scale(t, m, 2)
	out, code = runMeshctl(t, m, "check", "--wait", "3m")
	t.Logf("meshctl check --wait 3m after scaling back:\n%s", out)
	if code != 0 {
		t.Fatalf("check --wait 3m after scaling back exited %d", code)
	}
	for _, l := range checkLines(out) {
		if !strings.HasPrefix(l, "✔ ") {
			t.Errorf("check after scaling back: %q does not pass", l)
		}
	}
}

func runMeshctl(t *testing.T, m *helminstall.Mesh, args ...string) (string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
	defer cancel()
	start := time.Now()
	out, code, err := m.Meshctl(ctx, args...)
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	t.Logf("meshctl %s: exit %d after %s", strings.Join(args, " "), code, time.Since(start).Round(100*time.Millisecond))
	return out, code
}

// checkLines are the output's check lines: those with a result mark.
func checkLines(out string) []string {
	var lines []string
	for _, l := range strings.Split(out, "\n") {
		for _, mark := range []string{"✔ ", "‼ ", "✖ "} {
			if strings.HasPrefix(l, mark) {
				lines = append(lines, l)
			}
		}
	}
	return lines
}

// hasLine reports whether a line starts with prefix.
func hasLine(lines []string, prefix string) bool {
	for _, l := range lines {
		if strings.HasPrefix(l, prefix) {
			return true
		}
	}
	return false
}

func checkJSON(t *testing.T, m *helminstall.Mesh) meshctl.CheckReport {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
	defer cancel()
	// Standard output alone: a failed check exits 1, with the error on
	// standard error.
	out, _, _, err := m.MeshctlSplit(ctx, "check", "-o", "json")
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("meshctl check -o json:\n%s", out)
	var rep meshctl.CheckReport
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("check -o json: %v\n%s", err, out)
	}
	return rep
}

func resultOf(rep meshctl.CheckReport, desc string) string {
	for _, c := range rep.Categories {
		for _, r := range c.Checks {
			if r.Description == desc {
				return r.Result
			}
		}
	}
	return ""
}

// policyShow runs policy show deploy/echo -o json, which must exit want.
func policyShow(t *testing.T, m *helminstall.Mesh, want int) []meshctl.PodPolicy {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	out, stderr, code, err := m.MeshctlSplit(ctx, "policy", "show", "-n", appNS, "deploy/echo", "-o", "json")
	if err != nil || code != want {
		t.Fatalf("policy show: exit %d (want %d), %v\n%s%s", code, want, err, out, stderr)
	}
	t.Logf("meshctl policy show -n %s deploy/echo -o json:\n%s", appNS, out)
	// Several pods: a list, as kubectl prints one.
	var res struct{ Items []meshctl.PodPolicy }
	if err := json.Unmarshal([]byte(out), &res); err != nil {
		t.Fatalf("policy show -o json: %v\n%s", err, out)
	}
	return res.Items
}

func scale(t *testing.T, m *helminstall.Mesh, n int) {
	t.Helper()
	m.MustRun(t, "kubectl", "scale", "-n", system, "deployment/mesh-controller", fmt.Sprintf("--replicas=%d", n))
}
