package meshctl

import (
	"context"
	"fmt"
	"time"

	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/version"
)

// minKubernetes is the oldest Kubernetes mesh supports: the proxy is a
// native sidecar (an init container with restartPolicy: Always), on by
// default from 1.29.
var minKubernetes = version.MajorMinor(1, 29)

// Names the chart gives the mesh's objects (charts/mesh/templates/
// _helpers.tpl); the Lease is meshcontroller.LeaseName.
const (
	crdName           = "authorizationpolicies.security.mesh.dev"
	controllerName    = "mesh-controller"
	leaseName         = "mesh-controller"
	mutatingWebhook   = "mesh-injector"
	validatingWebhook = "mesh-policy-validator"
)

var (
	crdGVR    = schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}
	policyGVR = schema.GroupVersionResource{Group: "security.mesh.dev", Version: "v1alpha1", Resource: "authorizationpolicies"}
)

// apiCategory is the first category of both runs: nothing else can be
// checked without the API server.
func apiCategory() category {
	return category{name: "kubernetes-api", checkers: []checker{
		{
			description: "can reach the Kubernetes API",
			hint:        "check --kubeconfig/--context (or KUBECONFIG) and that the API server is up: kubectl version",
			fatal:       true,
			run: func(ctx context.Context, e *checkEnv) (string, error) {
				v, err := e.kube.Discovery().ServerVersion()
				if err != nil {
					return "", fmt.Errorf("GET /version: %w", err)
				}
				return v.GitVersion, nil
			},
		},
		{
			description: "Kubernetes is " + minKubernetes.String() + " or newer",
			hint:        "mesh runs its proxy as a native sidecar (an init container with restartPolicy: Always), on by default from Kubernetes 1.29: upgrade the cluster",
			run:         checkKubernetesVersion,
		},
		{
			description: "meshctl's clock agrees with the API server's",
			hint:        "synchronise the clocks (NTP) of this machine and the control plane's nodes: certificate validity and freshness are judged by them; --max-clock-skew sets the tolerance",
			run:         checkClockSkew,
		},
	}}
}

func checkKubernetesVersion(ctx context.Context, e *checkEnv) (string, error) {
	info, err := e.kube.Discovery().ServerVersion()
	if err != nil {
		return "", fmt.Errorf("GET /version: %w", err)
	}
	v, err := version.ParseGeneric(info.GitVersion)
	if err != nil {
		return "", fmt.Errorf("the API server's version %q: %w", info.GitVersion, err)
	}
	if v.LessThan(minKubernetes) {
		return "", fmt.Errorf("the API server is %s, older than %s", info.GitVersion, minKubernetes)
	}
	return info.GitVersion, nil
}

// checkClockSkew compares the API server's Date header with meshctl's
// clock. The header has whole seconds, so the server's time at the answer
// is in [date, date+1s), and meshctl's in [before, after]: the check fails
// only when the whole interval of possible skews is beyond the tolerance.
func checkClockSkew(ctx context.Context, e *checkEnv) (string, error) {
	date, before, after, err := e.serverDate(ctx)
	if err != nil {
		return "", fmt.Errorf("reading the API server's Date: %w", err)
	}
	low := date.Sub(after)                    // least skew possible
	high := date.Add(time.Second).Sub(before) // most skew possible
	tol := e.opts.maxClockSkew
	mid := (low + high) / 2
	msg := fmt.Sprintf("the API server's clock is %s %s meshctl's (tolerance %s)", abs(mid).Round(100*time.Millisecond), aheadBehind(mid), tol)
	if low > tol || high < -tol {
		return "", fmt.Errorf("%s", msg)
	}
	return fmt.Sprintf("within %s", tol), nil
}

func abs(d time.Duration) time.Duration {
	if d < 0 {
		return -d
	}
	return d
}

func aheadBehind(d time.Duration) string {
	if d < 0 {
		return "behind"
	}
	return "ahead of"
}
