package normalize_test

import (
	"fmt"
	"net/http"

	"github.com/mesh-dev/mesh/proxy/normalize"
)

func ExamplePath() {
	for _, target := range []string{"//admin", "/x/%2e%2e/admin?q=1", "/%61pi/a%3ab", "/a/..%2Fadmin"} {
		path, query, err := normalize.Path(target, normalize.DefaultMode)
		if err != nil {
			fmt.Println(err)
			continue
		}
		fmt.Printf("%s -> path %s query %q\n", target, path, query)
	}
	// Output:
	// //admin -> path /admin query ""
	// /x/%2e%2e/admin?q=1 -> path /admin query "q=1"
	// /%61pi/a%3ab -> path /api/a%3Ab query ""
	// normalize: request target "/a/..%2Fadmin": encoded '/' or '\' at byte 5: "%2F" is decoded only in mode DECODE_AND_MERGE_SLASHES
}

func ExampleHeaders() {
	h := http.Header{
		"X-Mesh-Peer-Identity": {"spiffe://forged"},
		"X_mesh_peer_identity": {"spiffe://forged"},
		"Accept":               {"*/*"},
	}
	removed, err := normalize.Headers(h, normalize.DefaultUnderscoreAction)
	fmt.Println(removed, err, h)
	// Output:
	// [X-Mesh-Peer-Identity X_mesh_peer_identity] <nil> map[Accept:[*/*]]
}
