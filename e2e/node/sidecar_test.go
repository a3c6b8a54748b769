package node

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// apiRequest is one request the agent made to the API server.
type apiRequest struct {
	method, path, query string
	watch               bool
}

func (r apiRequest) String() string {
	return fmt.Sprintf("%s %s?%s", r.method, r.path, r.query)
}

// apiLog records the agent's requests through its client's transport.
type apiLog struct {
	mu   sync.Mutex
	reqs []apiRequest
}

func (l *apiLog) wrap(rt http.RoundTripper) http.RoundTripper {
	return roundTripper(func(r *http.Request) (*http.Response, error) {
		l.mu.Lock()
		l.reqs = append(l.reqs, apiRequest{method: r.Method, path: r.URL.Path, query: r.URL.RawQuery, watch: r.URL.Query().Get("watch") == "true"})
		l.mu.Unlock()
		return rt.RoundTrip(r)
	})
}

type roundTripper func(*http.Request) (*http.Response, error)

func (f roundTripper) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// mark is the log's position now.
func (l *apiLog) mark() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.reqs)
}

// since are the requests after mark that match.
func (l *apiLog) since(mark int, match func(apiRequest) bool) []apiRequest {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []apiRequest
	for _, r := range l.reqs[mark:] {
		if match(r) {
			out = append(out, r)
		}
	}
	return out
}

// sidecar is a native sidecar: an init container with restartPolicy Always.
func sidecar(c corev1.Container) corev1.Container {
	always := corev1.ContainerRestartPolicyAlways
	c.RestartPolicy = &always
	return c
}

// echoSidecar is the echo app as a long-running sidecar on ports of its own
// (15020 HTTP), with a startup probe, so that it can share the pod's
// network with an app.
func echoSidecar(env ...corev1.EnvVar) corev1.Container {
	c := echoContainer()
	c.Name = "proxy"
	c.Ports = []corev1.ContainerPort{{Name: "admin", ContainerPort: 15020}}
	c.Env = append(c.Env, corev1.EnvVar{Name: "ECHO_HTTP_ADDR", Value: ":15020"}, corev1.EnvVar{Name: "ECHO_TCP_ADDR", Value: ":15021"}, corev1.EnvVar{Name: "ECHO_GRPC_ADDR", Value: ":15022"})
	c.Env = append(c.Env, env...)
	c.StartupProbe = &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/live", Port: intstr.FromString("admin")}}, PeriodSeconds: 1, FailureThreshold: 30}
	c.ReadinessProbe = &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/live", Port: intstr.FromString("admin")}}, PeriodSeconds: 1, FailureThreshold: 1}
	return c
}

// testJobSidecar: a Job whose pod has a native sidecar completes. The next
// init container and the job container start only once the sidecar has
// passed its startup probe (they fail, and with them the Job, if the
// sidecar does not answer); when the job container
// exits, the agent stops the sidecar, the pod Succeeds with the sidecar's
// termination reported, and the Job gets Complete.
func testJobSidecar(t *testing.T, n *Node) {
	cs, ctx := n.cfg.Kube, t.Context()
	backoffLimit := int32(0)
	_, err := cs.BatchV1().Jobs("echo").Create(ctx, &batchv1.Job{
		ObjectMeta: metav1.ObjectMeta{Name: "with-sidecar"},
		Spec: batchv1.JobSpec{BackoffLimit: &backoffLimit, Template: corev1.PodTemplateSpec{
			ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{"job": "with-sidecar"}},
			Spec: corev1.PodSpec{
				RestartPolicy:                 corev1.RestartPolicyNever,
				TerminationGracePeriodSeconds: ptrTo(int64(5)),
				InitContainers: []corev1.Container{
					sidecar(echoSidecar()),
					// An init container after the sidecar runs once the
					// sidecar has started.
					{Name: "after-sidecar", Image: ToolsImage, Command: []string{"bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/15020"}},
				},
				Containers: []corev1.Container{{Name: "work", Image: ToolsImage,
					// The sidecar must be up when the job starts.
					Command: []string{"bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/15020 && sleep 1 && echo worked"}}},
			},
		}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, 90*time.Second, "Job Complete", func() error {
		j, err := cs.BatchV1().Jobs("echo").Get(ctx, "with-sidecar", metav1.GetOptions{})
		if err != nil {
			return err
		}
		for _, c := range j.Status.Conditions {
			if c.Type == batchv1.JobFailed && c.Status == corev1.ConditionTrue {
				t.Fatalf("Job failed: %s: %s", c.Reason, c.Message)
			}
			if c.Type == batchv1.JobComplete && c.Status == corev1.ConditionTrue {
				return nil
			}
		}
		return fmt.Errorf("succeeded=%d failed=%d active=%d", j.Status.Succeeded, j.Status.Failed, j.Status.Active)
	})
	pods, err := cs.CoreV1().Pods("echo").List(ctx, metav1.ListOptions{LabelSelector: "job=with-sidecar"})
	if err != nil || len(pods.Items) != 1 {
		t.Fatalf("the Job's pods: %v, %v", pods, err)
	}
	p := pods.Items[0]
	if p.Status.Phase != corev1.PodSucceeded {
		t.Fatalf("pod phase %s, want Succeeded", p.Status.Phase)
	}
	if len(p.Status.InitContainerStatuses) != 2 || p.Status.InitContainerStatuses[0].State.Terminated == nil {
		t.Fatalf("the sidecar's termination is not reported: %+v", p.Status.InitContainerStatuses)
	}
	side, work := p.Status.InitContainerStatuses[0], p.Status.ContainerStatuses[0]
	if work.State.Terminated == nil || work.State.Terminated.ExitCode != 0 {
		t.Fatalf("the job container: %+v", work.State)
	}
	// The sidecar was started before the job and stopped after it.
	if st := side.State.Terminated; st.StartedAt.After(work.State.Terminated.StartedAt.Time) || st.FinishedAt.Before(&work.State.Terminated.FinishedAt) {
		t.Fatalf("sidecar ran %s..%s, job %s..%s", st.StartedAt, st.FinishedAt, work.State.Terminated.StartedAt, work.State.Terminated.FinishedAt)
	}
	if b, err := os.ReadFile(n.logPath("echo", p.Name, "work", false)); err != nil || !strings.Contains(string(b), "worked") {
		t.Fatalf("the job's log: %q, %v", b, err)
	}
	// Nothing of the pod is left running on the node.
	waitFor(t, 10*time.Second, "pod network removed", func() error {
		n.mu.Lock()
		rt := n.pods[p.UID]
		n.mu.Unlock()
		if rt != nil && !rt.finished() {
			return fmt.Errorf("the pod's goroutine still runs")
		}
		return nil
	})
}

// testSidecarReadiness: the pod is Ready while its sidecar's readiness
// probe passes, and becomes unready when it fails, though the main
// container stays ready.
func testSidecarReadiness(t *testing.T, n *Node) {
	cs, ctx := n.cfg.Kube, t.Context()
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "sidecar-ready"},
		Spec: corev1.PodSpec{
			// The sidecar's /live fails 15 s after it starts: the pod
			// must be seen Ready before, on a loaded machine too.
			InitContainers: []corev1.Container{sidecar(echoSidecar(corev1.EnvVar{Name: "ECHO_UNHEALTHY_AFTER", Value: "15s"}))},
			// The app's own readiness is an exec probe, run in the
			// container with its environment.
			Containers: []corev1.Container{{Name: "app", Image: ToolsImage, Command: []string{"sleep", "3600"}, Env: []corev1.EnvVar{{Name: "APP", Value: "on"}},
				ReadinessProbe: &corev1.Probe{PeriodSeconds: 1, ProbeHandler: corev1.ProbeHandler{Exec: &corev1.ExecAction{Command: []string{"sh", "-c", `test "$APP" = on`}}}}}},
		},
	}
	createPod(t, cs, "echo", p) // waits for Ready
	waitFor(t, 30*time.Second, "pod unready with its sidecar", func() error {
		got, err := cs.CoreV1().Pods("echo").Get(ctx, p.Name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		for _, c := range got.Status.Conditions {
			if c.Type == corev1.PodReady && c.Status == corev1.ConditionFalse {
				if len(got.Status.ContainerStatuses) != 1 || !got.Status.ContainerStatuses[0].Ready {
					t.Fatalf("the main container is not ready: %+v", got.Status.ContainerStatuses)
				}
				if s := got.Status.InitContainerStatuses; len(s) != 1 || s[0].Ready || s[0].State.Running == nil {
					t.Fatalf("the sidecar should be running and unready: %+v", s)
				}
				return nil
			}
		}
		return fmt.Errorf("still ready")
	})
	if err := cs.CoreV1().Pods("echo").Delete(ctx, p.Name, metav1.DeleteOptions{GracePeriodSeconds: ptrTo(int64(1))}); err != nil {
		t.Fatal(err)
	}
}

// testDeleteOrder: deleting a pod sends SIGTERM to its main container
// first, and to its sidecar only once the main container has exited.
func testDeleteOrder(t *testing.T, n *Node) {
	cs, ctx := n.cfg.Kube, t.Context()
	// Each writes the time it got SIGTERM (and the main one when it
	// exits, a second later) to its log.
	script := func(name, onTerm string) []string {
		return []string{"sh", "-c", `trap 'echo ` + name + `-term $(date +%s%N); ` + onTerm + ` exit 0' TERM; echo up; while :; do sleep 0.1; done`}
	}
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "ordered"},
		Spec: corev1.PodSpec{
			InitContainers: []corev1.Container{sidecar(corev1.Container{Name: "side", Image: ToolsImage, Command: script("side", "")})},
			Containers:     []corev1.Container{{Name: "main", Image: ToolsImage, Command: script("main", "sleep 1; echo main-exit $(date +%s%N);")}},
		},
	}
	createPod(t, cs, "echo", p) // 5 s grace
	// A running container's shell may not have set its trap yet: it says
	// "up" once it has. A SIGTERM before that would kill it silently.
	waitFor(t, 30*time.Second, "both containers' traps set", func() error {
		for _, c := range []string{"main", "side"} {
			if b, _ := os.ReadFile(n.logPath("echo", p.Name, c, false)); !strings.Contains(string(b), "up\n") {
				return fmt.Errorf("%s has not said up yet", c)
			}
		}
		return nil
	})
	if err := cs.CoreV1().Pods("echo").Delete(ctx, p.Name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 30*time.Second, "pod gone", func() error {
		if _, err := cs.CoreV1().Pods("echo").Get(ctx, p.Name, metav1.GetOptions{}); err == nil {
			return fmt.Errorf("still there")
		}
		return nil
	})
	stamp := func(container, what string) int64 {
		t.Helper()
		b, err := os.ReadFile(n.logPath("echo", p.Name, container, false))
		if err != nil {
			t.Fatal(err)
		}
		for _, l := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(l, what+" "); ok {
				ns, err := strconv.ParseInt(v, 10, 64)
				if err != nil {
					t.Fatal(err)
				}
				return ns
			}
		}
		t.Fatalf("%s's log has no %s:\n%s", container, what, b)
		return 0
	}
	mainTerm, mainExit, sideTerm := stamp("main", "main-term"), stamp("main", "main-exit"), stamp("side", "side-term")
	if !(mainTerm < mainExit && mainExit <= sideTerm) {
		t.Fatalf("main got SIGTERM at %d and exited at %d; the sidecar got SIGTERM at %d, before the main container exited", mainTerm, mainExit, sideTerm)
	}
}

// testWatchNotPoll: a pod created while the agent runs is started from the
// watch: while it is created and started, and for a while after, the agent
// lists no pods (the old agent listed them every 300 ms); its pods come on
// a watch of this node's pods.
func testWatchNotPoll(t *testing.T, n *Node, api *apiLog) {
	cs, ctx := n.cfg.Kube, t.Context()
	isPodList := func(r apiRequest) bool {
		return r.method == http.MethodGet && !r.watch && (r.path == "/api/v1/pods" || strings.HasSuffix(r.path, "/pods"))
	}
	mark := api.mark()
	start := time.Now()
	createPod(t, cs, "echo", &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "watched"}, Spec: corev1.PodSpec{Containers: []corev1.Container{echoContainer()}}})
	t.Logf("pod Ready %s after its creation", time.Since(start).Round(10*time.Millisecond))
	// Ten of the old polling periods more.
	select {
	case <-ctx.Done():
	case <-time.After(3 * time.Second):
	}
	if lists := api.since(mark, isPodList); len(lists) > 0 {
		t.Fatalf("the agent listed pods %d times in %s: %v", len(lists), time.Since(start), lists)
	}
	watches := api.since(0, func(r apiRequest) bool {
		return r.watch && r.path == "/api/v1/pods" && strings.Contains(r.query, "spec.nodeName%3D"+n.cfg.Name)
	})
	if len(watches) == 0 {
		t.Fatal("the agent does not watch its node's pods")
	}
	if err := cs.CoreV1().Pods("echo").Delete(context.Background(), "watched", metav1.DeleteOptions{GracePeriodSeconds: ptrTo(int64(1))}); err != nil {
		t.Fatal(err)
	}
}

// testSidecarRestart: a sidecar that exits is restarted, whatever the pod's
// restartPolicy, while the main container runs on.
func testSidecarRestart(t *testing.T, n *Node) {
	cs, ctx := n.cfg.Kube, t.Context()
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "sidecar-restarts"},
		Spec: corev1.PodSpec{
			RestartPolicy:                 corev1.RestartPolicyNever,
			TerminationGracePeriodSeconds: ptrTo(int64(1)),
			InitContainers:                []corev1.Container{sidecar(corev1.Container{Name: "side", Image: ToolsImage, Command: []string{"sh", "-c", "sleep 0.5; exit 3"}})},
			Containers:                    []corev1.Container{{Name: "app", Image: ToolsImage, Command: []string{"sleep", "3600"}}},
		},
	}
	if _, err := cs.CoreV1().Pods("echo").Create(ctx, p, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 30*time.Second, "sidecar restarted twice", func() error {
		got, err := cs.CoreV1().Pods("echo").Get(ctx, p.Name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		side := got.Status.InitContainerStatuses
		if len(side) != 1 || side[0].RestartCount < 2 {
			return fmt.Errorf("sidecar: %+v", side)
		}
		if last := side[0].LastTerminationState.Terminated; last == nil || last.ExitCode != 3 {
			t.Fatalf("the sidecar's last termination: %+v", side[0].LastTerminationState)
		}
		if app := got.Status.ContainerStatuses; len(app) != 1 || app[0].State.Running == nil || app[0].RestartCount != 0 || got.Status.Phase != corev1.PodRunning {
			t.Fatalf("the main container should run on: phase %s, %+v", got.Status.Phase, app)
		}
		return nil
	})
	if err := cs.CoreV1().Pods("echo").Delete(ctx, p.Name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
}

// testSameName: a pod created under the name of one still terminating
// (a StatefulSet's) starts once the old one is gone, and keeps its
// network: the old one's teardown does not remove the new one's
// namespace, which has the same name.
func testSameName(t *testing.T, n *Node, echo string) {
	cs, ctx := n.cfg.Kube, t.Context()
	slow := func() *corev1.Pod {
		c := echoContainer()
		// The app takes 2 s to stop after SIGTERM.
		c.Name, c.Image, c.Command = "slow", ToolsImage, []string{"sh", "-c", `trap 'sleep 2; exit 0' TERM; while :; do sleep 0.1; done`}
		c.ReadinessProbe, c.Env = nil, nil
		return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "same"}, Spec: corev1.PodSpec{Containers: []corev1.Container{c, echoContainer()}}}
	}
	createPod(t, cs, "echo", slow())
	old, err := cs.CoreV1().Pods("echo").Get(ctx, "same", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := cs.CoreV1().Pods("echo").Delete(ctx, "same", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	// Force the object away while the agent still stops its processes,
	// and create the new pod at once.
	zero := int64(0)
	if err := cs.CoreV1().Pods("echo").Delete(ctx, "same", metav1.DeleteOptions{GracePeriodSeconds: &zero}); err != nil {
		t.Fatal(err)
	}
	createPod(t, cs, "echo", slow())
	n.mu.Lock()
	oldRT := n.pods[old.UID]
	n.mu.Unlock()
	if oldRT != nil {
		select {
		case <-oldRT.done:
		case <-time.After(30 * time.Second):
			t.Fatal("the old pod did not finish")
		}
	}
	ip := podIP(t, cs, "echo", "same")
	if out, err := exec.Command("ip", "netns", "exec", NetnsName("echo", "same"), "ip", "-4", "addr", "show", "eth0").CombinedOutput(); err != nil || !strings.Contains(string(out), " "+ip+"/") {
		t.Fatalf("the new pod's network namespace is not there, or not its: %s %v", out, err)
	}
	// The new pod answers from its network namespace, after the old
	// pod's teardown.
	waitFor(t, 5*time.Second, "new pod reachable", func() error {
		out, err := exec.Command("ip", "netns", "exec", NetnsName("echo", "client"), echo, "get", "http://"+ip+":8080/").CombinedOutput()
		if err != nil || !strings.Contains(string(out), "hello from same ") {
			return fmt.Errorf("%q, %v", out, err)
		}
		return nil
	})
	if err := cs.CoreV1().Pods("echo").Delete(ctx, "same", metav1.DeleteOptions{GracePeriodSeconds: ptrTo(int64(3))}); err != nil {
		t.Fatal(err)
	}
}
