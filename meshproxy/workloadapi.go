package meshproxy

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// workloadAPIOptions are the flags of the SPIFFE Workload API the proxy
// serves to its pod's SPIFFE-native apps (package workloadapi).
type workloadAPIOptions struct {
	socket, uids string
}

func (o *workloadAPIOptions) addFlags(f *flag.FlagSet) {
	f.StringVar(&o.socket, "workload-api-socket", "", "serve the SPIFFE Workload API (this pod's X.509 SVID, key and bundle) on a unix socket at this path, in a directory shared with the app containers; empty: not served")
	f.StringVar(&o.uids, "workload-api-uids", "", "with --workload-api-socket: the app UIDs that may use it, comma-separated (never the proxy's own)")
}

// parse checks the flags: both or neither, and the proxy's own UID is not
// an app's (it holds the key already; an app running as it would also
// escape the iptables rules).
func (o *workloadAPIOptions) parse() ([]uint32, error) {
	if o.socket == "" {
		if o.uids != "" {
			return nil, fmt.Errorf("--workload-api-uids needs --workload-api-socket")
		}
		return nil, nil
	}
	if !filepath.IsAbs(o.socket) {
		return nil, fmt.Errorf("--workload-api-socket: %q is not an absolute path", o.socket)
	}
	var uids []uint32
	for _, f := range strings.Split(o.uids, ",") {
		if f = strings.TrimSpace(f); f == "" {
			continue
		}
		n, err := strconv.ParseUint(f, 10, 32)
		if err != nil {
			return nil, fmt.Errorf("--workload-api-uids: %q is not a UID", f)
		}
		if int(n) == os.Geteuid() {
			return nil, fmt.Errorf("--workload-api-uids: %d is the proxy's own UID, not an app's", n)
		}
		uids = append(uids, uint32(n))
	}
	if len(uids) == 0 {
		return nil, fmt.Errorf("--workload-api-socket needs --workload-api-uids: the app UIDs that may use it")
	}
	return uids, nil
}
