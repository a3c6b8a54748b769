package meshid

import (
	"strings"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

func TestForServiceAccount(t *testing.T) {
	td := spiffeid.RequireTrustDomainFromString("cluster.local")
	tests := []struct {
		td      spiffeid.TrustDomain
		ns, sa  string
		want    string
		wantErr string
	}{
		{td: td, ns: "shop", sa: "web", want: "spiffe://cluster.local/ns/shop/sa/web"},
		{td: td, ns: "kube-system", sa: "node.agent", want: "spiffe://cluster.local/ns/kube-system/sa/node.agent"},
		{ns: "shop", sa: "web", wantErr: `meshid: empty trust domain`},
		{td: td, ns: "", sa: "web", wantErr: `meshid: namespace "": `},
		{td: td, ns: "Shop", sa: "web", wantErr: `meshid: namespace "Shop": `},
		{td: td, ns: "shop/sa/x", sa: "web", wantErr: `meshid: namespace "shop/sa/x": `},
		{td: td, ns: "shop", sa: "../db", wantErr: `meshid: service account "../db": `},
		{td: td, ns: "shop", sa: "web/x", wantErr: `meshid: service account "web/x": `},
		{td: td, ns: "shop", sa: "", wantErr: `meshid: service account "": `},
	}
	for _, tt := range tests {
		id, err := ForServiceAccount(tt.td, tt.ns, tt.sa)
		if tt.wantErr != "" {
			if err == nil || !strings.HasPrefix(err.Error(), tt.wantErr) {
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
}

func TestServiceAccountOfRefuses(t *testing.T) {
	tests := []struct{ id, wantErr string }{
		{"spiffe://cluster.local/ns/shop", "is not of the form"},
		{"spiffe://cluster.local/ns/shop/sa/web/extra", "is not of the form"},
		{"spiffe://cluster.local/sa/web/ns/shop", "is not of the form"},
		{"spiffe://cluster.local", "is not of the form"},
		{"spiffe://cluster.local/ns/Shop/sa/web", `meshid: namespace "Shop"`},
		{"spiffe://cluster.local/ns/shop/sa/-web", `meshid: service account "-web"`},
	}
	for _, tt := range tests {
		_, _, err := ServiceAccountOf(spiffeid.RequireFromString(tt.id))
		if err == nil || !strings.Contains(err.Error(), tt.wantErr) || !strings.HasPrefix(err.Error(), "meshid: ") {
			t.Errorf("ServiceAccountOf(%q) error = %v, want one containing %q", tt.id, err, tt.wantErr)
		}
	}
}
