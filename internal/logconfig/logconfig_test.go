package logconfig

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"

	"github.com/spf13/pflag"
)

func TestNew(t *testing.T) {
	for _, tc := range []struct {
		cfg       Config
		err       string
		json      bool
		debugSeen bool
		infoSeen  bool
	}{
		{cfg: Config{}, json: true, infoSeen: true},
		{cfg: Config{Level: "debug", Format: "text"}, debugSeen: true, infoSeen: true},
		{cfg: Config{Level: "WARN", Format: "JSON"}, json: true},
		{cfg: Config{Level: "verbose"}, err: `--log-level "verbose"`},
		{cfg: Config{Format: "xml"}, err: `--log-format "xml"`},
	} {
		var buf bytes.Buffer
		log, err := tc.cfg.New(&buf)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%+v: err %v, want %q", tc.cfg, err, tc.err)
			}
			continue
		}
		if err != nil {
			t.Fatalf("%+v: %v", tc.cfg, err)
		}
		log.Debug("d")
		log.Info("i")
		out := buf.String()
		if strings.Contains(out, `"d"`) || strings.Contains(out, "msg=d") {
			if !tc.debugSeen {
				t.Errorf("%+v: debug logged: %s", tc.cfg, out)
			}
		} else if tc.debugSeen {
			t.Errorf("%+v: debug not logged: %s", tc.cfg, out)
		}
		if (strings.Contains(out, `"i"`) || strings.Contains(out, "msg=i")) != tc.infoSeen {
			t.Errorf("%+v: info logged %v: %s", tc.cfg, !tc.infoSeen, out)
		}
		if tc.json && out != "" {
			for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
				if !json.Valid([]byte(l)) {
					t.Errorf("%+v: not JSON: %s", tc.cfg, l)
				}
			}
		}
	}
}

func TestFlagsDefaultFromEnv(t *testing.T) {
	t.Setenv("MESH_LOG_LEVEL", "debug")
	t.Setenv("MESH_LOG_FORMAT", "text")
	var c Config
	fs := pflag.NewFlagSet("x", pflag.ContinueOnError)
	c.AddFlags(fs)
	if err := fs.Parse(nil); err != nil {
		t.Fatal(err)
	}
	if c.Level != "debug" || c.Format != "text" {
		t.Fatalf("defaults %+v, want the environment's", c)
	}
	if err := fs.Parse([]string{"--log-level", "error"}); err != nil || c.Level != "error" {
		t.Fatalf("the flag does not override the environment: %+v %v", c, err)
	}
}
