package castatus

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/mesh-dev/mesh/ca"
)

// FuzzParseDocument: the status ConfigMap can be edited by anyone allowed
// to patch it, and meshctl reads it. Whatever it holds, ParseDocument
// returns an error or a document that
//   - has exactly one active root, which Root finds, and at most one
//     prepared and one retiring root;
//   - has an issuer (and next issuer, if any) under that active root;
//   - names every certificate by a lower-case hex SHA-256, each root once;
//   - reads back the same: its JSON parses again to the same JSON;
//
// and it never panics. The seeds are the documents a real CA publishes at
// each step of a root rotation, and damaged ones.
func FuzzParseDocument(f *testing.F) {
	for _, s := range publishedDocuments(f) {
		f.Add([]byte(s))
		// Each step's document with one thing broken.
		f.Add(bytes.Replace([]byte(s), []byte(`"active"`), []byte(`"trusted"`), 1))
		f.Add(bytes.Replace([]byte(s), []byte(`"prepared"`), []byte(`"active"`), 1))
		f.Add(bytes.Replace([]byte(s), []byte(`"root": "`), []byte(`"root": "0`), 1))
		f.Add(bytes.Replace([]byte(s), []byte(`"fingerprint": "`), []byte(`"fingerprint": "A`), 1))
	}
	for _, s := range []string{
		``, `null`, `{}`, `[]`, `"x"`, `{"roots":[null],"issuer":null}`, `{"roots":{},"issuer":{}}`,
		`{"roots":[{"role":"active","fingerprint":"aa"}],"issuer":{"role":"active","fingerprint":"bb","root":"aa"}}`,
		`{"issuer":{"fingerprint":"x"},"roots":[{}],"svidTTL":1e400}`,
		`{"issuer":{"fingerprint":"x"},"roots":[{}],"updatedAt":"10000-01-01T00:00:00Z"}`,
		`{"issuer":{"fingerprint":"x"},"roots":[{}],"retireAfter":"0000-01-01T00:00:00+23:59"}`,
		`{"lastRequest":null,"nextIssuer":null}`, "{\"roots\":[\x00]}",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		d, err := ParseDocument(string(raw))
		if err != nil {
			if d != nil {
				t.Fatalf("ParseDocument(%q) returned %+v with error %v", raw, d, err)
			}
			return
		}
		active, ok := d.Root(ca.RoleActive)
		if !ok || d.Issuer.Root != active.Fingerprint || (d.NextIssuer != nil && d.NextIssuer.Root != active.Fingerprint) {
			t.Fatalf("ParseDocument(%q): the issuers are not under the active root: %+v", raw, d)
		}
		roles := map[string]int{}
		seen := map[string]bool{}
		for _, r := range d.Roots {
			if b, err := hex.DecodeString(r.Fingerprint); err != nil || len(b) != 32 || seen[r.Fingerprint] {
				t.Fatalf("ParseDocument(%q): root fingerprint %q is not a SHA-256, or is there twice", raw, r.Fingerprint)
			}
			seen[r.Fingerprint] = true
			roles[r.Role]++
		}
		if roles[ca.RoleActive] != 1 || roles[ca.RolePrepared] > 1 || roles[ca.RoleRetiring] > 1 || roles[ca.RoleActive]+roles[ca.RolePrepared]+roles[ca.RoleRetiring]+roles[ca.RoleTrusted] != len(d.Roots) {
			t.Fatalf("ParseDocument(%q): roles %v", raw, roles)
		}
		out, err := json.Marshal(d)
		if err != nil {
			t.Fatalf("ParseDocument(%q) accepted what it cannot write back: %v", raw, err)
		}
		again, err := ParseDocument(string(out))
		if err != nil {
			t.Fatalf("ParseDocument(%q) accepted, and refuses its own JSON %s: %v", raw, out, err)
		}
		if out2, _ := json.Marshal(again); !bytes.Equal(out, out2) {
			t.Fatalf("ParseDocument(%q) reads back differently:\n%s\n%s", raw, out, out2)
		}
	})
}

// publishedDocuments are the documents a real CA's status makes, as the
// publisher writes them, at each step of a root rotation and with a next
// issuer; each is checked to have a next issuer or a prepared or retiring
// root as it should, so that the seeds cover them.
func publishedDocuments(f *testing.F) []string {
	now := time.Date(2026, 11, 24, 12, 0, 0, 0, time.UTC)
	authority, err := ca.New(f.Context(), ca.Config{
		TrustDomain: spiffeid.RequireTrustDomainFromString("cluster.local"), Store: &ca.MemoryStore{},
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), Now: func() time.Time { return now },
	})
	if err != nil {
		f.Fatal(err)
	}
	var docs []string
	publish := func() {
		d := Document{Status: authority.Status(), UpdatedAt: now, Replica: "ctl-a", LastRequest: &Result{ID: newID(), Step: PrepareRoot, At: now}}
		b, err := json.MarshalIndent(d, "", "  ")
		if err != nil {
			f.Fatal(err)
		}
		if _, err := ParseDocument(string(b)); err != nil {
			f.Fatalf("a real CA's document is refused: %v\n%s", err, b)
		}
		docs = append(docs, string(b))
	}
	publish()
	for _, step := range []func() error{
		func() error { return authority.PrepareRoot(f.Context()) },
		func() error { return authority.ActivateRoot(f.Context()) },
		func() error {
			// Past half the issuer's life: a next issuer is prepared.
			now = now.Add(ca.DefaultIssuerTTL/2 + time.Hour)
			return authority.RotateIssuer(f.Context())
		},
	} {
		if err := step(); err != nil {
			f.Fatal(err)
		}
		publish()
	}
	for i, want := range []func(*Document) bool{
		func(d *Document) bool { return len(d.Roots) == 1 && d.NextIssuer == nil },
		func(d *Document) bool { _, ok := d.Root(ca.RolePrepared); return ok },
		func(d *Document) bool { _, ok := d.Root(ca.RoleRetiring); return ok && !d.RetireAfter.IsZero() },
		func(d *Document) bool { return d.NextIssuer != nil },
	} {
		if d, err := ParseDocument(docs[i]); err != nil || !want(d) {
			f.Fatalf("document %d is not the rotation step it should be: %v\n%s", i, err, docs[i])
		}
	}
	return docs
}
