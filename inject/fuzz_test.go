package inject_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"

	"github.com/mesh-dev/mesh/controlplane/inventory"
	"github.com/mesh-dev/mesh/inject"
)

// FuzzInject: any pod an API server could send (its JSON and the values
// of the annotations the injector reads) gives a PodError, a skip, or a
// patch that applies and yields a meshed pod that is not injected again.
// Never a panic.
func FuzzInject(f *testing.F) {
	seed, _ := json.Marshal(web())
	f.Add(seed, "9000,8081", "5432", "5432", "strict", "permissive", "enabled", "")
	f.Add(seed, "abc", "", "", "STRICT", "", "", "enabled")
	f.Add([]byte(`{"spec":{"containers":[{"name":"a","readinessProbe":{"httpGet":{"port":"http"}},"ports":[{"name":"http","containerPort":0}]}]}}`), "", "", "", "", "", "enabled", "enabled")
	f.Add([]byte(`{"spec":{"securityContext":{"runAsUser":1000},"containers":[{"name":"a","env":[{"name":"X"}]},{"name":"b","securityContext":{"runAsUser":0},"volumeMounts":[{"name":"v","mountPath":"/run"}]}]}}`), "", "", "", "", "", "enabled", "enabled")
	f.Add([]byte(`{"spec":{"securityContext":{"runAsUser":1000},"containers":[{"name":"a","volumeMounts":[{"name":"v","mountPath":"/data"}]}]}}`), "", "", "", "", "", "", "enabled")
	f.Add([]byte(`{"spec":{"initContainers":[{"name":"x","restartPolicy":"Always","livenessProbe":{"grpc":{"port":-1}}}]}}`), "0", "65536", "-1", "permissive", "strict", "disabled", "disabled")
	f.Add([]byte(`{"metadata":{"annotations":null},"spec":{"hostNetwork":true}}`), ",,,", " , ", "1,1,1", "", "", "enabled", "Enabled")
	in := newInjector(f, inject.Config{})
	f.Fuzz(func(t *testing.T, podJSON []byte, skipIn, skipOut, opaque, inMode, outMode, enable, wapi string) {
		var pod corev1.Pod
		if json.Unmarshal(podJSON, &pod) != nil {
			return
		}
		if pod.Annotations == nil {
			pod.Annotations = map[string]string{}
		}
		for k, v := range map[string]string{inject.SkipInboundPorts: skipIn, inject.SkipOutboundPorts: skipOut, inject.OpaquePorts: opaque,
			inject.InboundMode: inMode, inject.OutboundMode: outMode, inject.InjectKey: enable, inject.WorkloadAPI: wapi} {
			if v != "" {
				pod.Annotations[k] = v
			}
		}
		res, err := in.Inject(&pod, labelled)
		var pe *inject.PodError
		switch {
		case err != nil && !errors.As(err, &pe):
			t.Fatalf("an error that is not a PodError: %v", err)
		case err != nil || res.Patch == nil:
			return
		}
		got := apply(t, &pod, res.Patch)
		if !inventory.Meshed(got) {
			t.Fatal("patched pod is not meshed")
		}
		// The workload API, when asked for, reaches every app container,
		// and the proxy admits exactly their UIDs.
		if pod.Annotations[inject.WorkloadAPI] == inject.Enabled {
			uids, _ := argOf(find(got.Spec.InitContainers, inject.ProxyContainer).Args, "--workload-api-uids")
			for _, c := range got.Spec.Containers {
				e, ok := envOf(&c, inject.EndpointSocketEnv)
				if !ok || e.Value != "unix://"+inject.WorkloadAPISocket {
					t.Fatalf("container %s: %s %+v", c.Name, inject.EndpointSocketEnv, e)
				}
				var uid *int64
				if c.SecurityContext != nil && c.SecurityContext.RunAsUser != nil {
					uid = c.SecurityContext.RunAsUser
				} else if got.Spec.SecurityContext != nil {
					uid = got.Spec.SecurityContext.RunAsUser
				}
				if uid == nil || !slices.Contains(strings.Split(uids, ","), fmt.Sprint(*uid)) {
					t.Fatalf("container %s (uid %v) is not in --workload-api-uids %q", c.Name, uid, uids)
				}
			}
		}
		again, err := in.Inject(got, labelled)
		if err != nil || again.Patch != nil {
			t.Fatalf("injected twice: %v %+v", err, again)
		}
	})
}

// FuzzParseConfig: no config file panics the parser or New.
func FuzzParseConfig(f *testing.F) {
	f.Add([]byte("proxyUID: 2102\nexcludeInboundPorts: [22, \"9000\"]\naudit: {enabled: false}"))
	f.Add([]byte("resources: {limits: {memory: 1Gi}}\npathNormalization: none"))
	f.Add([]byte("identityAddr: '[::1]:15012,a:1'"))
	f.Fuzz(func(t *testing.T, b []byte) {
		cfg, err := inject.ParseConfig(b)
		if err != nil {
			return
		}
		_, _ = inject.New(cfg, mesh)
	})
}
