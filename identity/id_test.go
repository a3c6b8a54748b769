package identity

import (
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

func TestForServiceAccount(t *testing.T) {
	td := spiffeid.RequireTrustDomainFromString("cluster.local")
	tests := []struct {
		ns, sa  string
		want    string
		wantErr string
	}{
		{ns: "shop", sa: "web", want: "spiffe://cluster.local/ns/shop/sa/web"},
		{ns: "kube-system", sa: "node.agent", want: "spiffe://cluster.local/ns/kube-system/sa/node.agent"},
		{ns: "", sa: "web", wantErr: `meshid: namespace "": `},
		{ns: "Shop", sa: "web", wantErr: `meshid: namespace "Shop": `},
		{ns: "shop", sa: "../db", wantErr: `meshid: service account "../db": `},
		{ns: "shop", sa: "", wantErr: `meshid: service account "": `},
	}
	for _, tt := range tests {
		id, err := ForServiceAccount(td, tt.ns, tt.sa)
		if tt.wantErr != "" {
			if err == nil || len(err.Error()) < len(tt.wantErr) || err.Error()[:len(tt.wantErr)] != tt.wantErr {
				t.Errorf("ForServiceAccount(%q, %q) error = %v, want prefix %q", tt.ns, tt.sa, err, tt.wantErr)
			}
			continue
		}
		if err != nil || id.String() != tt.want {
			t.Errorf("ForServiceAccount(%q, %q) = %q, %v; want %q", tt.ns, tt.sa, id, err, tt.want)
			continue
		}
		ns, sa, err := ServiceAccountOf(id)
		if err != nil || ns != tt.ns || sa != tt.sa {
			t.Errorf("ServiceAccountOf(%q) = %q, %q, %v", id, ns, sa, err)
		}
	}
	for _, bad := range []string{"spiffe://cluster.local/ns/shop", "spiffe://cluster.local/ns/shop/sa/web/extra", "spiffe://cluster.local/sa/web/ns/shop", "spiffe://cluster.local/ns/Shop/sa/web"} {
		if _, _, err := ServiceAccountOf(spiffeid.RequireFromString(bad)); err == nil {
			t.Errorf("ServiceAccountOf(%q) accepted", bad)
		}
	}
}
