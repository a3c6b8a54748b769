package main

import (
	"os"
	"strings"
	"testing"
)

// TestMeshConfigs: the mesh pair's configurations carry HTTP for mesh and
// TCP opaque on both sides for mesh-tcp; a mesh-tcp that spoke HTTP would
// measure the HTTP path and call it the floor.
func TestMeshConfigs(t *testing.T) {
	e := &env{work: t.TempDir(), pki: pkiFiles{ClientID: "spiffe://bench.local/client", ServerID: "spiffe://bench.local/server"}}
	tests := []struct {
		opaque     bool
		p          path
		server     string
		clientHas  string
		clientLack string
	}{
		{false, pathHTTP, "protocol: http", "", "protocol:"},
		{false, pathGRPC, "protocol: grpc", "", "protocol:"},
		{true, pathHTTP, "protocol: opaque", "protocol: opaque", ""},
	}
	for _, tc := range tests {
		d := newConfData(e, tc.p)
		d.Opaque = tc.opaque
		srv, err := render(e, "server.yaml", meshServer, d)
		if err != nil {
			t.Fatal(err)
		}
		cli, err := render(e, "client.yaml", meshClient, d)
		if err != nil {
			t.Fatal(err)
		}
		s, _ := os.ReadFile(srv)
		c, _ := os.ReadFile(cli)
		if !strings.Contains(string(s), tc.server) {
			t.Errorf("opaque=%v %s: server config lacks %q:\n%s", tc.opaque, tc.p, tc.server, s)
		}
		if tc.clientHas != "" && !strings.Contains(string(c), tc.clientHas) {
			t.Errorf("opaque=%v %s: client config lacks %q:\n%s", tc.opaque, tc.p, tc.clientHas, c)
		}
		if tc.clientLack != "" && strings.Contains(string(c), tc.clientLack) {
			t.Errorf("opaque=%v %s: client config has %q:\n%s", tc.opaque, tc.p, tc.clientLack, c)
		}
	}
}
