package normalize_test

import (
	"testing"

	"github.com/mesh-dev/mesh/proxy/normalize"
)

func TestMethod(t *testing.T) {
	tests := []struct {
		method string
		err    string // "" for accepted
	}{
		{"GET", ""},
		{"HEAD", ""},
		{"POST", ""},
		{"PUT", ""},
		{"DELETE", ""},
		{"CONNECT", ""},
		{"OPTIONS", ""},
		{"TRACE", ""},
		{"PATCH", ""},
		{"PURGE", ""},
		{"purge", ""}, // not a standard method: no rule can be mis-cased
		{"GETS", ""},
		{"PROPFIND", ""},
		{"M-SEARCH", ""},
		{"delete", `normalize: method "delete" is not upper-case DELETE`},
		{"Delete", `normalize: method "Delete" is not upper-case DELETE`},
		{"dELETE", `normalize: method "dELETE" is not upper-case DELETE`},
		{"get", `normalize: method "get" is not upper-case GET`},
		{"Get", `normalize: method "Get" is not upper-case GET`},
		{"pAtCh", `normalize: method "pAtCh" is not upper-case PATCH`},
		{"connect", `normalize: method "connect" is not upper-case CONNECT`},
		{"", `normalize: empty method`},
		{"GE T", `normalize: method "GE T" is not a token: byte 0x20 at 2`},
		{"GET\x00", `normalize: method "GET\x00" is not a token: byte 0x00 at 3`},
		{"GET/", `normalize: method "GET/" is not a token: byte 0x2f at 3`},
		// Unicode case folding must not make these DELETE or GET.
		{"PO\u017fT", "normalize: method \"PO\u017fT\" is not a token: byte 0xc5 at 2"}, // ſ folds to S
		{"\u212aILL", "normalize: method \"\u212aILL\" is not a token: byte 0xe2 at 0"},
		{"ＧＥＴ", `normalize: method "ＧＥＴ" is not a token: byte 0xef at 0`},
	}
	for _, tt := range tests {
		t.Run(tt.method, func(t *testing.T) {
			err := normalize.Method(tt.method)
			got := ""
			if err != nil {
				got = err.Error()
			}
			if got != tt.err {
				t.Errorf("Method(%q) = %q; want %q", tt.method, got, tt.err)
			}
		})
	}
}

func TestMethodNoAlloc(t *testing.T) {
	for _, m := range []string{"GET", "DELETE", "PURGE"} {
		if n := testing.AllocsPerRun(100, func() { _ = normalize.Method(m) }); n != 0 {
			t.Errorf("Method(%q) allocates %.0f times; want 0", m, n)
		}
	}
}
