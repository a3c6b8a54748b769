package node

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/mesh-dev/mesh/e2e/cluster"
)

// TestKubeProxyConfig pins what confines kube-proxy: its ranges, NodePorts
// on the bridge address only, no conntrack sysctl, loopback endpoints.
func TestKubeProxyConfig(t *testing.T) {
	for _, mode := range []string{"nftables", "iptables"} {
		b, err := kubeProxyConfig("/k/kc", "node-7", mode, 1111, 2222)
		if err != nil {
			t.Fatal(err)
		}
		var cfg struct {
			Kind             string   `json:"kind"`
			Mode             string   `json:"mode"`
			HostnameOverride string   `json:"hostnameOverride"`
			BindAddress      string   `json:"bindAddress"`
			Healthz          string   `json:"healthzBindAddress"`
			Metrics          string   `json:"metricsBindAddress"`
			ClusterCIDR      string   `json:"clusterCIDR"`
			NodePortAddrs    []string `json:"nodePortAddresses"`
			Client           struct {
				Kubeconfig string `json:"kubeconfig"`
			} `json:"clientConnection"`
			Conntrack map[string]any `json:"conntrack"`
			IPTables  struct {
				LocalhostNodePorts *bool `json:"localhostNodePorts"`
			} `json:"iptables"`
		}
		if err := json.Unmarshal(b, &cfg); err != nil {
			t.Fatal(err)
		}
		checks := map[string][2]string{
			"kind":               {cfg.Kind, "KubeProxyConfiguration"},
			"mode":               {cfg.Mode, mode},
			"hostnameOverride":   {cfg.HostnameOverride, "node-7"},
			"bindAddress":        {cfg.BindAddress, "198.18.0.1"},
			"healthzBindAddress": {cfg.Healthz, "127.0.0.1:1111"},
			"metricsBindAddress": {cfg.Metrics, "127.0.0.1:2222"},
			"clusterCIDR":        {cfg.ClusterCIDR, "198.18.0.0/17"},
			"nodePortAddresses":  {strings.Join(cfg.NodePortAddrs, ","), "198.18.0.1/32"},
			"kubeconfig":         {cfg.Client.Kubeconfig, "/k/kc"},
		}
		for k, v := range checks {
			if v[0] != v[1] {
				t.Errorf("%s: %s = %q, want %q", mode, k, v[0], v[1])
			}
		}
		for _, k := range []string{"maxPerCore", "min"} {
			if v, ok := cfg.Conntrack[k].(float64); !ok || v != 0 {
				t.Errorf("%s: conntrack.%s = %v, want 0 (leave nf_conntrack_max alone)", mode, k, cfg.Conntrack[k])
			}
		}
		for _, k := range []string{"tcpEstablishedTimeout", "tcpCloseWaitTimeout", "udpTimeout", "udpStreamTimeout"} {
			if cfg.Conntrack[k] != "0s" {
				t.Errorf("%s: conntrack.%s = %v, want 0s (leave the timeout alone)", mode, k, cfg.Conntrack[k])
			}
		}
		if cfg.IPTables.LocalhostNodePorts == nil || *cfg.IPTables.LocalhostNodePorts {
			t.Errorf("%s: iptables.localhostNodePorts is not false (it would set route_localnet)", mode)
		}
	}
	if _, err := kubeProxyConfig("/k", "n", "ipvs", 1, 2); err == nil || !strings.HasPrefix(err.Error(), "node: ") {
		t.Fatalf("mode ipvs (it sets ip_forward) accepted: %v", err)
	}
}

// TestAddressPlan: the agent's copy of the cluster's address plan is the
// cluster's.
func TestAddressPlan(t *testing.T) {
	for _, c := range [][3]string{
		{"NodeIP", NodeIP, cluster.NodeAddress},
		{"PodCIDR", PodCIDR, cluster.PodCIDR},
		{"ServiceCIDR", ServiceCIDR, cluster.ServiceCIDR},
		{"ClusterDNS", ClusterDNS, cluster.ClusterDNS},
		{"ClusterDomain", ClusterDomain, cluster.ClusterDomain},
	} {
		if c[1] != c[2] {
			t.Errorf("node.%s = %s, cluster's is %s", c[0], c[1], c[2])
		}
	}
}

// TestSynced: kube-proxy counts as ready only once its IPv4 rules were
// written; its /healthz says "healthy" long before.
func TestSynced(t *testing.T) {
	for _, tc := range []struct {
		name string
		body string
		want bool
	}{
		{"starting: healthy, nothing synced", `{"lastUpdated":"2026-11-24T14:23:04Z","currentTime":"2026-11-24T14:23:04Z","nodeEligible":true,"healthy":true}`, false},
		{"IPv4 synced", `{"healthy":true,"status":{"IPv4":{"lastUpdated":"2026-11-24T14:23:05Z","healthy":true},"IPv6":{"lastUpdated":"0001-01-01T00:00:00Z","healthy":true}}}`, true},
		{"only IPv6 synced", `{"healthy":true,"status":{"IPv6":{"lastUpdated":"2026-11-24T14:23:05Z","healthy":true}}}`, false},
		{"IPv4 zero time", `{"healthy":true,"status":{"IPv4":{"lastUpdated":"0001-01-01T00:00:00Z","healthy":true}}}`, false},
		{"IPv4 unhealthy", `{"healthy":false,"status":{"IPv4":{"lastUpdated":"2026-11-24T14:23:05Z","healthy":false}}}`, false},
		{"not JSON", `ok`, false},
		{"empty", ``, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := synced([]byte(tc.body)); got != tc.want {
				t.Fatalf("synced(%s) = %v, want %v", tc.body, got, tc.want)
			}
		})
	}
}
