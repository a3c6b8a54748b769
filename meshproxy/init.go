package meshproxy

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/mesh-dev/mesh/proxy"
	"github.com/mesh-dev/mesh/proxy/intercept"
)

func initCmd() *cobra.Command {
	var (
		cfg                                  intercept.Config
		inSkip, outSkip, outCIDRs, ipt, ipv6 string
		dryRun                               bool
	)
	cmd := &cobra.Command{
		Use:   "init",
		Short: "Install the pod's iptables interception rules (idempotent)",
		// No arguments: "--ipv6 on" must not parse as --ipv6 plus a stray "on".
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var err error
			if cfg.InboundSkipPorts, err = intercept.ParsePorts(inSkip); err != nil {
				return err
			}
			if cfg.OutboundSkipPorts, err = intercept.ParsePorts(outSkip); err != nil {
				return err
			}
			if cfg.OutboundSkipCIDRs, err = intercept.ParseCIDRs(outCIDRs); err != nil {
				return err
			}
			cfg.IPTables = ipt
			cfg.IPv6 = intercept.IPv6Mode(ipv6)
			if dryRun {
				plan, err := cfg.Plan()
				if err != nil {
					return err
				}
				fmt.Fprint(cmd.OutOrStdout(), plan)
				return nil
			}
			res, err := intercept.Apply(cmd.Context(), &cfg)
			if err != nil {
				return err
			}
			fmt.Fprint(cmd.OutOrStdout(), res)
			return nil
		},
	}
	f := cmd.Flags()
	f.IntVar(&cfg.ProxyUID, "proxy-uid", 1337, "UID the proxy runs as; its traffic is not intercepted")
	f.IntVar(&cfg.InboundPort, "inbound-port", proxy.DefaultInboundPort, "proxy inbound port")
	f.IntVar(&cfg.OutboundPort, "outbound-port", proxy.DefaultOutboundPort, "proxy outbound port")
	f.IntVar(&cfg.AdminPort, "admin-port", proxy.DefaultAdminPort, "proxy admin port (never intercepted)")
	f.StringVar(&inSkip, "inbound-skip-ports", "", "comma-separated inbound ports not intercepted")
	f.StringVar(&outSkip, "outbound-skip-ports", "", "comma-separated outbound ports not intercepted")
	f.StringVar(&outCIDRs, "outbound-skip-cidrs", "", "comma-separated destination CIDRs not intercepted")
	f.StringVar(&ipv6, "ipv6", string(intercept.IPv6Auto), "IPv6: auto (intercept it if the namespace has it; where ip6tables cannot, drop IPv6 TCP or disable IPv6; else fail) or on (intercept it or fail)")
	f.Lookup("ipv6").NoOptDefVal = string(intercept.IPv6On) // a bare --ipv6 keeps its old meaning
	f.StringVar(&ipt, "iptables", "iptables", "iptables binary: iptables, iptables-nft or iptables-legacy")
	f.StringVar(&cfg.IP6Tables, "ip6tables", "", "ip6tables binary (default: derived from --iptables, e.g. ip6tables-nft)")
	f.BoolVar(&dryRun, "dry-run", false, "print the rules instead of installing them")
	return cmd
}
