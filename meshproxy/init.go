package meshproxy

import (
	"context"
	"flag"
	"fmt"
	"io"

	"github.com/mesh-dev/mesh/proxy"
	"github.com/mesh-dev/mesh/proxy/intercept"
)

func initCommand() command {
	return command{
		name:  "init",
		short: "Install the pod's iptables interception rules (idempotent)",
		flags: initFlags,
	}
}

func initFlags(f *flag.FlagSet) func(ctx context.Context, stdout, _ io.Writer) error {
	var (
		cfg                            intercept.Config
		inSkip, outSkip, outCIDRs, ipt string
		ipv6                           = ipv6Flag(intercept.IPv6Auto)
		dryRun                         bool
	)
	f.IntVar(&cfg.ProxyUID, "proxy-uid", 1337, "UID the proxy runs as; its traffic is not intercepted")
	f.IntVar(&cfg.InboundPort, "inbound-port", proxy.DefaultInboundPort, "proxy inbound port")
	f.IntVar(&cfg.OutboundPort, "outbound-port", proxy.DefaultOutboundPort, "proxy outbound port")
	f.IntVar(&cfg.AdminPort, "admin-port", proxy.DefaultAdminPort, "proxy admin port (never intercepted)")
	f.StringVar(&inSkip, "inbound-skip-ports", "", "comma-separated inbound ports not intercepted")
	f.StringVar(&outSkip, "outbound-skip-ports", "", "comma-separated outbound ports not intercepted")
	f.StringVar(&outCIDRs, "outbound-skip-cidrs", "", "comma-separated destination CIDRs not intercepted")
	f.Var(&ipv6, "ipv6", "IPv6: auto (intercept it if the namespace has it; where ip6tables cannot, drop IPv6 TCP or disable IPv6; else fail) or on (intercept it or fail); a bare --ipv6 is on")
	f.StringVar(&ipt, "iptables", "iptables", "iptables binary: iptables, iptables-nft or iptables-legacy")
	f.StringVar(&cfg.IP6Tables, "ip6tables", "", "ip6tables binary (default: derived from --iptables, e.g. ip6tables-nft)")
	f.BoolVar(&dryRun, "dry-run", false, "print the rules instead of installing them")
	return func(ctx context.Context, stdout, _ io.Writer) error {
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
			fmt.Fprint(stdout, plan)
			return nil
		}
		res, err := intercept.Apply(ctx, &cfg)
		if err != nil {
			return err
		}
		fmt.Fprint(stdout, res)
		return nil
	}
}

// ipv6Flag is --ipv6. A bare --ipv6 means on, as it did before the mode
// took a value: flag hands a boolean flag given without a value "true",
// so the flag says it is boolean and reads "true" as on. "--ipv6 on" is
// therefore --ipv6 and a stray argument, which Execute refuses.
type ipv6Flag intercept.IPv6Mode

func (v *ipv6Flag) String() string {
	if v == nil {
		return ""
	}
	return string(*v)
}

func (v *ipv6Flag) Set(s string) error {
	if s == "true" {
		s = string(intercept.IPv6On)
	}
	*v = ipv6Flag(s)
	return nil
}

func (*ipv6Flag) IsBoolFlag() bool { return true }
