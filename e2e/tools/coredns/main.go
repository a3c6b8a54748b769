// Command coredns is CoreDNS with only the plugins the local cluster's DNS
// add-on uses: it answers cluster.local from the API server and nothing
// else. There is deliberately no forward plugin, so no query ever leaves
// the pod network; names outside the server blocks are refused.
package main

import (
	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/coremain"

	// The Corefile's plugins (e2e/cluster/addons.go writes it).
	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/ready"
	_ "github.com/coredns/coredns/plugin/reload"
)

// directives is the order plugins run in, a subset of CoreDNS's own list
// (core/dnsserver/zdirectives.go) in the same order.
var directives = []string{"reload", "health", "ready", "errors", "cache", "kubernetes"}

func main() {
	dnsserver.Directives = directives
	coremain.Run()
}
