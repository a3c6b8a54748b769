package meshctl

import (
	"context"
	"encoding/json"
	"io"
	"sync"
	"time"

	"github.com/spf13/cobra"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/cli-runtime/pkg/genericclioptions"
	"sigs.k8s.io/yaml"
)

// printStructured prints v as indented JSON or as YAML when output asks
// for either, and reports whether it did; the table is the caller's.
func printStructured(w io.Writer, output string, v any) (bool, error) {
	switch output {
	case "json":
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return true, enc.Encode(v)
	case "yaml":
		b, err := yaml.Marshal(v)
		if err != nil {
			return true, err
		}
		_, err = w.Write(b)
		return true, err
	}
	return false, nil
}

// oneOrItems is what -o json|yaml prints of per-pod results: a pod's
// result alone, or {"items": [...]} of several, as kubectl prints one
// object or a list.
func oneOrItems[T any](items []T) any {
	if len(items) == 1 {
		return items[0]
	}
	return map[string]any{"items": items}
}

// workloadArg completes a command's one pod/NAME or deploy/NAME argument.
func workloadArg(kube *genericclioptions.ConfigFlags) func(*cobra.Command, []string, string) ([]string, cobra.ShellCompDirective) {
	return func(cmd *cobra.Command, args []string, toComplete string) ([]string, cobra.ShellCompDirective) {
		if len(args) > 0 {
			return nil, cobra.ShellCompDirectiveNoFileComp
		}
		return completeWorkloads(cmd.Context(), kube, toComplete), cobra.ShellCompDirectiveNoFileComp
	}
}

// eachProxy calls read for every pod, proxyReaders at a time, each bounded
// by 10 seconds: reads of the proxies through the API server.
func eachProxy(ctx context.Context, pods []corev1.Pod, read func(ctx context.Context, i int)) {
	sem := make(chan struct{}, proxyReaders)
	var wg sync.WaitGroup
	for i := range pods {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			defer cancel()
			read(rctx, i)
		})
	}
	wg.Wait()
}
