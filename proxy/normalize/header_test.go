package normalize_test

import (
	"net/http"
	"slices"
	"testing"

	"github.com/mesh-dev/mesh/proxy/normalize"
)

func TestIsMeshHeader(t *testing.T) {
	tests := []struct {
		name string
		want bool
	}{
		{"X-Mesh-Peer-Identity", true},
		{"x-mesh-peer-identity", true},
		{"X-MESH-PEER-IDENTITY", true},
		{"x_mesh_peer_identity", true},
		{"X_Mesh-Peer_identity", true},
		{"X-Mesh_Peer-Identity", true},
		{"HTTP_X_MESH_PEER_IDENTITY"[5:], true},
		{"X-Mesh-Anything-Else", true},
		{"x-mesh-", true},
		{"X_MESH_", true},
		{"X-Mesh", false},
		{"X-Meshy", false},
		{"X-Mesh.Peer", false},
		{"XMesh-Peer-Identity", false},
		{"X--Mesh-Peer", false},
		{"Y-Mesh-Peer", false},
		{" X-Mesh-Peer-Identity", false},
		{"X\u2010Mesh-Peer", false}, // a Unicode hyphen is not one any framework maps
		{"", false},
		{"X-Forwarded-Client-Cert", false},
	}
	for _, tt := range tests {
		if got := normalize.IsMeshHeader(tt.name); got != tt.want {
			t.Errorf("IsMeshHeader(%q) = %v; want %v", tt.name, got, tt.want)
		}
	}
}

func TestHeaders(t *testing.T) {
	// What a client trying to forge its identity sends, as Go's server
	// hands it over (keys canonicalised where Go canonicalises them).
	forged := func() http.Header {
		return http.Header{
			"X-Mesh-Peer-Identity": {"spiffe://evil/admin"},
			"X_mesh_peer_identity": {"spiffe://evil/admin"},
			"X-Mesh_peer-Identity": {"spiffe://evil/admin"},
			"x-mesh-peer-identity": {"spiffe://evil/admin"}, // HTTP/2 or a hand-built map
			"X-Mesh-Other":         {"1"},
			"X_user":               {"admin"},
			"Accept":               {"*/*"},
			"X-User":               {"alice"},
		}
	}
	mesh := []string{"X-Mesh-Other", "X-Mesh-Peer-Identity", "X-Mesh_peer-Identity", "X_mesh_peer_identity", "x-mesh-peer-identity"}
	tests := []struct {
		action  normalize.UnderscoreAction
		removed []string
		kept    []string
		err     string
	}{
		{normalize.Reject, mesh, []string{"Accept", "X-User", "X_user"}, `normalize: header "X_user" has '_' in its name; requests with such headers are refused (underscore action reject)`},
		{normalize.Drop, append(slices.Clone(mesh[:4]), "X_user", "x-mesh-peer-identity"), []string{"Accept", "X-User"}, ""},
		{normalize.Allow, mesh, []string{"Accept", "X-User", "X_user"}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.action.String(), func(t *testing.T) {
			h := forged()
			removed, err := normalize.Headers(h, tt.action)
			got := ""
			if err != nil {
				got = err.Error()
			}
			if got != tt.err {
				t.Errorf("error %q; want %q", got, tt.err)
			}
			if !slices.Equal(removed, tt.removed) {
				t.Errorf("removed %q; want %q", removed, tt.removed)
			}
			var kept []string
			for k := range h {
				kept = append(kept, k)
			}
			slices.Sort(kept)
			if !slices.Equal(kept, tt.kept) {
				t.Errorf("kept %q; want %q", kept, tt.kept)
			}
			if h.Get("X-User") != "alice" || h.Get("Accept") != "*/*" {
				t.Errorf("ordinary headers changed: %v", h)
			}
		})
	}
}

func TestHeadersRejectNamesSmallest(t *testing.T) {
	// The error must not depend on map order.
	for range 20 {
		h := http.Header{"Z_b": {"1"}, "A_b": {"1"}, "M_b": {"1"}}
		_, err := normalize.Headers(h, normalize.Reject)
		if want := `normalize: header "A_b" has '_' in its name; requests with such headers are refused (underscore action reject)`; err == nil || err.Error() != want {
			t.Fatalf("error %v; want %s", err, want)
		}
	}
}

func TestHeadersClean(t *testing.T) {
	h := http.Header{"Accept": {"*/*"}, "Content-Type": {"text/plain"}}
	var removed []string
	var err error
	if n := testing.AllocsPerRun(100, func() { removed, err = normalize.Headers(h, normalize.Reject) }); n != 0 {
		t.Errorf("Headers on clean headers allocates %.0f times; want 0", n)
	}
	if removed != nil || err != nil || len(h) != 2 {
		t.Errorf("Headers on clean headers = %q, %v; headers now %v", removed, err, h)
	}
	if _, err := normalize.Headers(http.Header{}, 0); err == nil || err.Error() != "normalize: underscore header action 0 is not valid" {
		t.Errorf("Headers with the zero action: %v", err)
	}
}
