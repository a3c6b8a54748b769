package normalize_test

import (
	"go/parser"
	"go/token"
	"strings"
	"testing"

	"github.com/mesh-dev/mesh/proxy/normalize"
)

// TestDocTable keeps the examples in the package documentation true: every
// row of the table in doc.go is run through Path in the three normalising
// modes, "400" standing for an error.
func TestDocTable(t *testing.T) {
	f, err := parser.ParseFile(token.NewFileSet(), "doc.go", nil, parser.ParseComments|parser.PackageClauseOnly)
	if err != nil {
		t.Fatal(err)
	}
	if f.Doc == nil {
		t.Fatal("doc.go has no package documentation")
	}
	doc := f.Doc.Text()
	rows := tableRows(t, doc)
	if len(rows) < 20 {
		t.Fatalf("found %d example rows in the package documentation; the table is missing or its header changed", len(rows))
	}
	cols := []normalize.Mode{normalize.Base, normalize.MergeSlashes, normalize.DecodeAndMergeSlashes}
	for _, r := range rows {
		for i, m := range cols {
			path, _, err := normalize.Path(r[0], m)
			got := path
			if err != nil {
				got = "400"
			}
			if got != r[i+1] {
				t.Errorf("doc table: Path(%q, %s) gives %q (err %v); the table says %q", r[0], m, got, err, r[i+1])
			}
		}
	}
}

// tableRows returns the fields of each line after the header line of the
// example table, up to the first line that is not a four-column row.
func tableRows(t *testing.T, doc string) [][]string {
	t.Helper()
	var rows [][]string
	in := false
	for _, line := range strings.Split(doc, "\n") {
		fields := strings.Fields(line)
		if !in {
			in = len(fields) == 5 && fields[0] == "request" && fields[2] == "BASE"
			continue
		}
		if len(fields) != 4 {
			break
		}
		rows = append(rows, fields)
	}
	return rows
}
