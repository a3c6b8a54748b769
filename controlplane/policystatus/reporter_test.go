package policystatus_test

import (
	"context"
	"io"
	"log/slog"
	"maps"
	"strings"
	"sync"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/mesh-dev/mesh/controlplane/policystatus"
)

// source is the counts a test sets, as the control-plane server would.
type source struct {
	mu      sync.Mutex
	counts  map[string]map[int64]int32
	changed chan struct{}
}

func newSource(counts map[string]map[int64]int32) *source {
	return &source{counts: counts, changed: make(chan struct{})}
}

func (s *source) Enforcement() map[string]map[int64]int32 {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := map[string]map[int64]int32{}
	for k, v := range s.counts {
		out[k] = maps.Clone(v)
	}
	return out
}

func (s *source) EnforcementChanged() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.changed
}

func (s *source) set(counts map[string]map[int64]int32) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.counts = counts
	close(s.changed)
	s.changed = make(chan struct{})
}

// startReporter runs a Reporter with only reporterRules in the
// controller's namespace; stop ends it and returns Run's error.
func (e *env) startReporter(t *testing.T, replica string, src policystatus.Source, minInterval, heartbeat time.Duration) (stop func() error) {
	t.Helper()
	rc := e.restricted(t, "mesh-policy-status-reporter", e.ns, reporterRules)
	return e.startReporterAs(t, rc, replica, src, minInterval, heartbeat, io.Discard)
}

func (e *env) startReporterAs(t *testing.T, rc *rest.Config, replica string, src policystatus.Source, minInterval, heartbeat time.Duration, log io.Writer) (stop func() error) {
	t.Helper()
	cs, err := kubernetes.NewForConfig(rc)
	if err != nil {
		t.Fatal(err)
	}
	r, err := policystatus.NewReporter(policystatus.ReporterConfig{
		Kube: cs, Namespace: e.ns, Replica: replica, Source: src, MinInterval: minInterval, Heartbeat: heartbeat,
		Logger: slog.New(slog.NewTextHandler(io.MultiWriter(t.Output(), log), nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	var once sync.Once
	var runErr error
	stop = func() error {
		once.Do(func() { cancel(); runErr = <-done })
		return runErr
	}
	t.Cleanup(func() { stop() })
	return stop
}

// read returns replica's report as stored.
func (e *env) read(ctx context.Context, replica string) (*policystatus.Report, string, error) {
	cm, err := e.admin.CoreV1().ConfigMaps(e.ns).Get(ctx, policystatus.ReportName(replica), metav1.GetOptions{})
	if err != nil {
		return nil, "", err
	}
	if cm.Labels[policystatus.ReportLabel] != "true" {
		return nil, "", &labelError{cm.Labels}
	}
	r, err := policystatus.ParseReport([]byte(cm.Data[policystatus.ReportKey]))
	return r, cm.ResourceVersion, err
}

type labelError struct{ labels map[string]string }

func (e *labelError) Error() string {
	return "report label missing: " + strings.Join(slicesOf(e.labels), ",")
}

func slicesOf(m map[string]string) []string {
	var out []string
	for k, v := range m {
		out = append(out, k+"="+v)
	}
	return out
}

func sameCounts(a, b map[string]map[int64]int32) bool {
	return maps.EqualFunc(a, b, func(x, y map[int64]int32) bool { return maps.Equal(x, y) })
}

// TestReporter: the report holds the source's counts (without entries a
// Writer would refuse), follows changes, is renewed by the heartbeat
// when nothing changes, and is deleted when Run ends.
func TestReporter(t *testing.T) {
	e := setup(t, "ps-reporter-ctl")
	src := newSource(map[string]map[int64]int32{"shop/web": {3: 2}, "not a key": {1: 1}, "shop/idle": {1: 0}})
	const minInterval, heartbeat = 200 * time.Millisecond, time.Second
	start := time.Now()
	stop := e.startReporter(t, "ctl-0", src, minInterval, heartbeat)

	var first *policystatus.Report
	eventually(t, "the first report", func() error {
		var err error
		first, _, err = e.read(t.Context(), "ctl-0")
		return err
	})
	if want := map[string]map[int64]int32{"shop/web": {3: 2}}; first.Replica != "ctl-0" || !sameCounts(first.Policies, want) {
		t.Errorf("first report %+v, want replica ctl-0 with %v", first, want)
	}
	if first.Updated.Before(start.Add(-time.Second)) || first.Updated.After(time.Now().Add(time.Second)) {
		t.Errorf("report dated %v, written between %v and now", first.Updated, start)
	}

	// Nothing changes: the heartbeat renews the time, counts as they were.
	eventually(t, "a heartbeat", func() error {
		r, _, err := e.read(t.Context(), "ctl-0")
		if err == nil && (!r.Updated.After(first.Updated) || !sameCounts(r.Policies, first.Policies)) {
			err = errorf("report %+v not renewed", r)
		}
		return err
	})

	// A burst of changes: the report ends with the last, and is written at
	// most once per MinInterval (plus heartbeats) meanwhile.
	w, err := e.admin.CoreV1().ConfigMaps(e.ns).Watch(t.Context(), metav1.ListOptions{FieldSelector: "metadata.name=" + policystatus.ReportName("ctl-0")})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Stop()
	burst := time.Now()
	for i := range 40 {
		src.set(map[string]map[int64]int32{"shop/web": {3: int32(2 + i)}, "shop/api": {1: 1}})
		time.Sleep(10 * time.Millisecond)
	}
	final := map[string]map[int64]int32{"shop/web": {3: 41}, "shop/api": {1: 1}}
	writes := 0
	deadline := time.After(bound)
	for done := false; !done; {
		select {
		case ev := <-w.ResultChan():
			if ev.Type != watch.Modified {
				continue
			}
			writes++
			r, _, err := e.read(t.Context(), "ctl-0")
			done = err == nil && sameCounts(r.Policies, final)
		case <-deadline:
			t.Fatalf("the report never showed the last counts %v", final)
		}
	}
	took := time.Since(burst)
	if limit := int(took/minInterval) + 1 + int(took/heartbeat) + 1; writes > limit {
		t.Errorf("%d writes in %s with MinInterval %s", writes, took, minInterval)
	}

	if err := stop(); err != nil {
		t.Errorf("Run: %v", err)
	}
	if _, _, err := e.read(t.Context(), "ctl-0"); !apierrors.IsNotFound(err) {
		t.Errorf("report after Run ended: %v, want it deleted", err)
	}
}

// TestReporterRetries: a Reporter that may not write yet (its RBAC comes
// later) keeps trying and reports once it may.
func TestReporterRetries(t *testing.T) {
	e := setup(t, "ps-retry-ctl")
	// A user with no rights yet.
	const user = "mesh-policy-status-late"
	path := t.TempDir() + "/kubeconfig"
	if err := e.c.WriteKubeconfig(path, user, nil); err != nil {
		t.Fatal(err)
	}
	rc := restConfig(t, path)
	log := &logBuffer{}
	e.startReporterAs(t, rc, "late", newSource(map[string]map[int64]int32{"shop/web": {1: 1}}), 100*time.Millisecond, time.Second, log)
	eventually(t, "a refused write to be logged", func() error {
		if !strings.Contains(log.String(), "forbidden") {
			return errorf("no refusal logged yet")
		}
		return nil
	})
	e.restricted(t, user, e.ns, reporterRules)
	eventually(t, "the report, once allowed", func() error {
		_, _, err := e.read(t.Context(), "late")
		return err
	})
}

// TestReporterAndWriter: the whole chain, the counts of this replica's
// proxies from the Reporter to the policy's status.
func TestReporterAndWriter(t *testing.T) {
	const ns = "ps-chain"
	e := setup(t, "ps-chain-ctl", ns)
	e.pod(t, ns, "a", podSpec{meshed: true, labels: map[string]string{"app": "a"}})
	e.pod(t, ns, "b", podSpec{meshed: true, labels: map[string]string{"app": "a"}})
	e.createPolicy(t, allow(ns, "a", selectApp("a")))
	src := newSource(nil)
	e.startReporter(t, "ctl-0", src, 100*time.Millisecond, time.Second)
	e.startWriter(t, policystatus.WriterConfig{})
	e.await(t, ns, "a", want{"0/2", 1, nil, []string{"Enforced=False/Pending: 0/2 proxies enforce generation 1"}})
	src.set(map[string]map[int64]int32{ns + "/a": {1: 1}})
	e.await(t, ns, "a", want{"1/2", 1, nil, []string{"Enforced=False/Pending: 1/2 proxies enforce generation 1"}})
	// The second proxy is on another replica.
	src2 := newSource(map[string]map[int64]int32{ns + "/a": {1: 1}})
	stop2 := e.startReporter(t, "ctl-1", src2, 100*time.Millisecond, time.Second)
	e.await(t, ns, "a", want{"2/2", 1, nil, []string{"Enforced=True/Enforced: 2/2 proxies enforce generation 1"}})
	// That replica stops: its report goes with it.
	if err := stop2(); err != nil {
		t.Fatal(err)
	}
	e.await(t, ns, "a", want{"1/2", 1, nil, []string{"Enforced=False/Pending"}})
}
