package node

import (
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func dnsPod(policy corev1.DNSPolicy, hostNet bool, cfg *corev1.PodDNSConfig) *corev1.Pod {
	return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "p", Namespace: "shop"}, Spec: corev1.PodSpec{DNSPolicy: policy, HostNetwork: hostNet, DNSConfig: cfg}}
}

func TestResolvConf(t *testing.T) {
	host := []byte("# the node's\nnameserver 192.0.2.53\nsearch corp.example\noptions edns0 ndots:1\n")
	cluster := "nameserver 198.18.192.10\nsearch shop.svc.cluster.local svc.cluster.local cluster.local\noptions ndots:5\n"
	two := "2"
	for _, tc := range []struct {
		name    string
		pod     *corev1.Pod
		want    string
		wantErr string
	}{
		{"default policy is ClusterFirst", dnsPod("", false, nil), cluster, ""},
		{"ClusterFirst", dnsPod(corev1.DNSClusterFirst, false, nil), cluster, ""},
		{"ClusterFirst on the host network is Default", dnsPod(corev1.DNSClusterFirst, true, nil), "", ""},
		{"ClusterFirstWithHostNet", dnsPod(corev1.DNSClusterFirstWithHostNet, true, nil), cluster, ""},
		{"Default keeps the node's", dnsPod(corev1.DNSDefault, false, nil), "", ""},
		{"Default with dnsConfig merges into the node's", dnsPod(corev1.DNSDefault, false, &corev1.PodDNSConfig{
			Nameservers: []string{"198.18.0.53"}, Searches: []string{"extra.example"}, Options: []corev1.PodDNSConfigOption{{Name: "ndots", Value: &two}},
		}), "nameserver 192.0.2.53\nnameserver 198.18.0.53\nsearch corp.example extra.example\noptions edns0 ndots:2\n", ""},
		{"None takes dnsConfig only", dnsPod(corev1.DNSNone, false, &corev1.PodDNSConfig{
			Nameservers: []string{"198.18.0.53", "198.18.0.53"}, Options: []corev1.PodDNSConfigOption{{Name: "edns0"}},
		}), "nameserver 198.18.0.53\noptions edns0\n", ""},
		{"ClusterFirst with dnsConfig appends and overrides", dnsPod(corev1.DNSClusterFirst, false, &corev1.PodDNSConfig{
			Nameservers: []string{"198.18.0.2", "198.18.0.3", "198.18.0.4"}, Searches: []string{"cluster.local", "x.example"}, Options: []corev1.PodDNSConfigOption{{Name: "ndots", Value: &two}},
		}), "nameserver 198.18.192.10\nnameserver 198.18.0.2\nnameserver 198.18.0.3\nsearch shop.svc.cluster.local svc.cluster.local cluster.local x.example\noptions ndots:2\n", ""},
		{"None without nameservers", dnsPod(corev1.DNSNone, false, &corev1.PodDNSConfig{Searches: []string{"a"}}), "", "dnsPolicy None needs dnsConfig.nameservers"},
		{"unknown policy", dnsPod("Cluster", false, nil), "", `dnsPolicy "Cluster" is not`},
		{"nameserver not an IP", dnsPod(corev1.DNSNone, false, &corev1.PodDNSConfig{Nameservers: []string{"ns.example"}}), "", `nameserver "ns.example" is not an IP`},
		{"a newline in a search domain adds no line", dnsPod(corev1.DNSClusterFirst, false, &corev1.PodDNSConfig{Searches: []string{"a\nnameserver 192.0.2.1"}}), "", "has a space, control character or comment"},
		{"a space in an option", dnsPod(corev1.DNSClusterFirst, false, &corev1.PodDNSConfig{Options: []corev1.PodDNSConfigOption{{Name: "ndots:1 x"}}}), "", "has a space"},
		{"duplicates count once", dnsPod(corev1.DNSNone, false, &corev1.PodDNSConfig{Nameservers: []string{"198.18.0.2"}, Searches: strings.Split(strings.Repeat("d,", 33)+"e", ",")}), "nameserver 198.18.0.2\nsearch d e\n", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := resolvConf(tc.pod, host)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) || !strings.HasPrefix(err.Error(), "node: ") {
					t.Fatalf("resolvConf = %q, %v; want error containing %q", got, err, tc.wantErr)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("resolvConf =\n%s(err %v)\nwant\n%s", got, err, tc.want)
			}
		})
	}
	var many []string
	for i := range 33 {
		many = append(many, "d"+strings.Repeat("x", i))
	}
	if _, err := resolvConf(dnsPod(corev1.DNSNone, false, &corev1.PodDNSConfig{Nameservers: []string{"198.18.0.2"}, Searches: many}), nil); err == nil {
		t.Fatal("33 search domains accepted, want at most 32")
	}
}

// FuzzResolvConf: whatever a pod's DNS settings, the file has only
// nameserver, search and options lines, nameservers are IPs, and there are
// at most three of them.
func FuzzResolvConf(f *testing.F) {
	f.Add("ClusterFirst", "198.18.0.53", "x.example", "ndots", "2", []byte("nameserver 192.0.2.1\n"))
	f.Add("None", "::1", "a\nnameserver 192.0.2.9", "edns0", "", []byte(""))
	f.Add("Default", "198.18.0.53", "b;c", "timeout", "1 2", []byte("search a b\noptions x\nnameserver q\n"))
	f.Fuzz(func(t *testing.T, policy, ns, search, opt, val string, host []byte) {
		cfg := &corev1.PodDNSConfig{Nameservers: []string{ns}, Searches: []string{search}, Options: []corev1.PodDNSConfigOption{{Name: opt, Value: &val}}}
		out, err := resolvConf(dnsPod(corev1.DNSPolicy(policy), false, cfg), host)
		if err != nil {
			return
		}
		servers := 0
		for _, line := range strings.Split(strings.TrimSuffix(out, "\n"), "\n") {
			if out == "" {
				break
			}
			f := strings.Fields(line)
			if len(f) < 2 || !slices.Contains([]string{"nameserver", "search", "options"}, f[0]) || strings.Join(f, " ") != line {
				t.Fatalf("line %q of\n%s", line, out)
			}
			if f[0] == "nameserver" {
				servers++
			}
		}
		if servers > maxNameservers {
			t.Fatalf("%d nameservers:\n%s", servers, out)
		}
	})
}

func TestServiceEnvVars(t *testing.T) {
	svc := func(name, ip string, ports ...corev1.ServicePort) corev1.Service {
		return corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: corev1.ServiceSpec{ClusterIP: ip, Ports: ports}}
	}
	for _, tc := range []struct {
		name string
		svcs []corev1.Service
		want []string
	}{
		{"kubernetes", []corev1.Service{svc("kubernetes", "198.18.192.1", corev1.ServicePort{Name: "https", Port: 443, Protocol: corev1.ProtocolTCP})}, []string{
			"KUBERNETES_SERVICE_HOST=198.18.192.1", "KUBERNETES_SERVICE_PORT=443", "KUBERNETES_SERVICE_PORT_HTTPS=443",
			"KUBERNETES_PORT=tcp://198.18.192.1:443", "KUBERNETES_PORT_443_TCP=tcp://198.18.192.1:443",
			"KUBERNETES_PORT_443_TCP_PROTO=tcp", "KUBERNETES_PORT_443_TCP_PORT=443", "KUBERNETES_PORT_443_TCP_ADDR=198.18.192.1",
		}},
		{"dashes, two ports, UDP, no protocol", []corev1.Service{svc("kube-dns", "198.18.192.10",
			corev1.ServicePort{Name: "dns", Port: 53, Protocol: corev1.ProtocolUDP}, corev1.ServicePort{Name: "dns-tcp", Port: 53})}, []string{
			"KUBE_DNS_SERVICE_HOST=198.18.192.10", "KUBE_DNS_SERVICE_PORT=53", "KUBE_DNS_SERVICE_PORT_DNS=53", "KUBE_DNS_SERVICE_PORT_DNS_TCP=53",
			"KUBE_DNS_PORT=udp://198.18.192.10:53",
			"KUBE_DNS_PORT_53_UDP=udp://198.18.192.10:53", "KUBE_DNS_PORT_53_UDP_PROTO=udp", "KUBE_DNS_PORT_53_UDP_PORT=53", "KUBE_DNS_PORT_53_UDP_ADDR=198.18.192.10",
			"KUBE_DNS_PORT_53_TCP=tcp://198.18.192.10:53", "KUBE_DNS_PORT_53_TCP_PROTO=tcp", "KUBE_DNS_PORT_53_TCP_PORT=53", "KUBE_DNS_PORT_53_TCP_ADDR=198.18.192.10",
		}},
		{"headless, ExternalName and portless are skipped", []corev1.Service{
			svc("headless", corev1.ClusterIPNone, corev1.ServicePort{Port: 80}), svc("ext", "", corev1.ServicePort{Port: 80}), svc("noports", "198.18.192.7"),
		}, nil},
		{"a name seen twice keeps the first", []corev1.Service{svc("a", "198.18.192.2", corev1.ServicePort{Port: 1}), svc("a", "198.18.192.3", corev1.ServicePort{Port: 2})}, []string{
			"A_SERVICE_HOST=198.18.192.2", "A_SERVICE_PORT=1", "A_PORT=tcp://198.18.192.2:1", "A_PORT_1_TCP=tcp://198.18.192.2:1",
			"A_PORT_1_TCP_PROTO=tcp", "A_PORT_1_TCP_PORT=1", "A_PORT_1_TCP_ADDR=198.18.192.2",
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := serviceEnvVars(tc.svcs); !slices.Equal(got, tc.want) {
				t.Fatalf("serviceEnvVars =\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(tc.want, "\n"))
			}
		})
	}
}
