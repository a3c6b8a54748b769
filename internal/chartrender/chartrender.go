// Package chartrender renders a Helm chart with Helm's own libraries, as
// `helm template` (and so `helm install`) does, for tests that check what
// the chart creates: charts/ checks the chart itself, meshctl that
// `check --pre` asks for the right permissions.
package chartrender

import (
	"fmt"
	"strings"

	"helm.sh/helm/v3/pkg/chart"
	"helm.sh/helm/v3/pkg/chart/loader"
	"helm.sh/helm/v3/pkg/chartutil"
	"helm.sh/helm/v3/pkg/engine"
	"helm.sh/helm/v3/pkg/releaseutil"
	"helm.sh/helm/v3/pkg/strvals"
)

// Load loads the chart in dir as helm install does.
func Load(dir string) (*chart.Chart, error) {
	ch, err := loader.Load(dir)
	if err != nil {
		return nil, fmt.Errorf("chartrender: loading the chart in %s: %w", dir, err)
	}
	return ch, nil
}

// Values merges a values file (if any) and --set arguments, the way
// `helm install -f file --set a=b` does: --set is parsed by Helm's own
// strvals, so `--set trustDomain=123` gives the integer Helm gives.
func Values(file string, sets []string) (map[string]any, error) {
	vals := map[string]any{}
	if file != "" {
		v, err := chartutil.ReadValuesFile(file)
		if err != nil {
			return nil, fmt.Errorf("chartrender: reading %s: %w", file, err)
		}
		vals = v.AsMap()
	}
	for _, s := range sets {
		if err := strvals.ParseInto(s, vals); err != nil {
			return nil, fmt.Errorf("chartrender: --set %s: %w", s, err)
		}
	}
	return vals, nil
}

// Rendered is one `helm template` run.
type Rendered struct {
	// Manifests in Helm's install order, as `helm template` prints them.
	Manifests []releaseutil.Manifest
	Notes     string
}

// Render is `helm template NAME CHART -n NAMESPACE` with the given user
// values, schema validation included: its error is what helm install would
// print. A chart with hooks is refused: mesh's has none, and Render would
// not say when they run.
func Render(ch *chart.Chart, name, namespace string, vals map[string]any) (*Rendered, error) {
	rv, err := chartutil.ToRenderValues(ch, vals, chartutil.ReleaseOptions{
		Name: name, Namespace: namespace, Revision: 1, IsInstall: true,
	}, chartutil.DefaultCapabilities)
	if err != nil {
		return nil, err
	}
	files, err := engine.Render(ch, rv)
	if err != nil {
		return nil, err
	}
	out := &Rendered{}
	for name, content := range files {
		if strings.HasSuffix(name, "NOTES.txt") {
			out.Notes = content
			delete(files, name)
		}
	}
	hooks, manifests, err := releaseutil.SortManifests(files, nil, releaseutil.InstallOrder)
	if err != nil {
		return nil, err
	}
	if len(hooks) != 0 {
		return nil, fmt.Errorf("the chart has %d hooks; none were expected", len(hooks))
	}
	out.Manifests = manifests
	return out, nil
}
