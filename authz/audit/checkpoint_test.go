package audit_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/mesh-dev/mesh/authz/audit"
	"github.com/mesh-dev/mesh/identity/appsvid"
	"github.com/mesh-dev/mesh/internal/testpki"
)

const (
	backendID = "spiffe://cluster.local/ns/shop/sa/backend"
	cartID    = "spiffe://cluster.local/ns/shop/sa/cart"
	otherNSID = "spiffe://cluster.local/ns/billing/sa/backend"
)

// sequence is an SVID source that hands out its SVIDs in turn, one per
// checkpoint, the last one for ever: a deterministic rotation.
type sequence struct {
	mu    sync.Mutex
	svids []*x509svid.SVID
}

func (s *sequence) GetX509SVID() (*x509svid.SVID, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.svids) == 0 {
		return nil, errors.New("sequence: no SVID")
	}
	v := s.svids[0]
	if len(s.svids) > 1 {
		s.svids = s.svids[1:]
	}
	return v, nil
}

// signedLog writes n records (record(0..n-1), of namespace shop) through
// a real Writer that signs every `every` records with src, shuts it down
// (a last checkpoint), and returns the lines.
func signedLog(t *testing.T, src x509svid.Source, stream string, n, every int) []string {
	t.Helper()
	return signedLogTB(t, src, stream, n, every)
}

func signedLogTB(t testing.TB, src x509svid.Source, stream string, n, every int) []string {
	t.Helper()
	var buf bytes.Buffer
	w, err := audit.New(audit.Config{Out: &buf, Stream: stream, SVIDs: src, CheckpointEvery: every, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	for i := range n {
		w.Write(record(i))
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel() // Run drains what is queued, signs, and returns.
	if err := w.Run(ctx); err != nil {
		t.Fatal(err)
	}
	return strings.Split(strings.TrimSuffix(buf.String(), "\n"), "\n")
}

func verifySigned(lines []string, opts audit.VerifyOptions) (audit.Result, error) {
	return audit.Verify(strings.NewReader(strings.Join(lines, "\n")+"\n"), opts)
}

func event(t *testing.T, l string) string {
	t.Helper()
	var v struct{ Event string }
	if err := json.Unmarshal([]byte(l), &v); err != nil {
		t.Fatalf("%v: %s", err, l)
	}
	return v.Event
}

var (
	seqField      = regexp.MustCompile(`"seq":\d+,`)
	prevHashField = regexp.MustCompile(`"prevHash":"[0-9a-f]{64}"`)
	cpField       = regexp.MustCompile(`"checkpoint\.seq":\d+,"checkpoint\.head":"[0-9a-f]{64}"`)
)

// rechain is what a forger who knows the scheme does after editing: it
// renumbers every stream from 1 and recomputes every prevHash and hash.
// With fixCheckpoints it also points each checkpoint's seq and head at the
// new previous record (it cannot re-sign: it has no key).
func rechain(t *testing.T, lines []string, fixCheckpoints bool) []string {
	t.Helper()
	type head struct {
		seq  int
		hash string
	}
	heads := map[string]head{}
	out := make([]string, len(lines))
	for i, l := range lines {
		var v struct{ Stream, Event string }
		if err := json.Unmarshal([]byte(l), &v); err != nil {
			t.Fatal(err)
		}
		h, ok := heads[v.Stream]
		if !ok {
			h.hash = audit.Genesis
		}
		if fixCheckpoints && v.Event == "checkpoint" {
			l = cpField.ReplaceAllString(l, fmt.Sprintf(`"checkpoint.seq":%d,"checkpoint.head":"%s"`, h.seq, h.hash))
		}
		l = seqField.ReplaceAllString(l, fmt.Sprintf(`"seq":%d,`, h.seq+1))
		l = prevHashField.ReplaceAllString(l, `"prevHash":"`+h.hash+`"`)
		l = rehash(t, l)
		out[i] = l
		heads[v.Stream] = head{h.seq + 1, l[len(l)-66 : len(l)-2]}
	}
	return out
}

func without(lines []string, drop func(i int, l string) bool) []string {
	var out []string
	for i, l := range lines {
		if !drop(i, l) {
			out = append(out, l)
		}
	}
	return out
}

func flip(l string) string {
	return strings.Replace(l, `"decision":"deny"`, `"decision":"allow"`, 1)
}

// TestCheckpointsAdversarial: a log signed by a real SVID of the mesh CA
// verifies and names its signer; every way a forger with the file but not
// the key could rewrite it fails, at the line where it shows.
func TestCheckpointsAdversarial(t *testing.T) {
	pki := testpki.New(t, "cluster.local")
	bundle := pki.Bundle()
	backend := pki.Source(t, backendID)
	// 10 records, a checkpoint every 4 and at shutdown:
	// lines 1-4 records, 5 checkpoint, 6-9 records, 10 checkpoint,
	// 11-12 records, 13 checkpoint.
	lines := signedLog(t, backend, "shop/backend-0@1", 10, 4)
	if len(lines) != 13 {
		t.Fatalf("%d lines, want 13:\n%s", len(lines), strings.Join(lines, "\n"))
	}
	for _, i := range []int{4, 9, 12} {
		if e := event(t, lines[i]); e != "checkpoint" {
			t.Fatalf("line %d is a %q record, want a checkpoint", i+1, e)
		}
	}

	foreign := testpki.New(t, "cluster.local") // same trust domain, another CA
	rotated := &sequence{svids: []*x509svid.SVID{pki.SVID(t, backendID), pki.SVID(t, backendID), pki.SVID(t, backendID)}}
	switched := &sequence{svids: []*x509svid.SVID{pki.SVID(t, backendID), pki.SVID(t, cartID)}}
	a := signedLog(t, pki.Source(t, backendID), "shop/backend-0@2", 5, 2)
	b := signedLog(t, pki.Source(t, cartID), "shop/cart-0@2", 3, 100)
	var interleaved []string
	for i := range max(len(a), len(b)) {
		if i < len(a) {
			interleaved = append(interleaved, a[i])
		}
		if i < len(b) {
			interleaved = append(interleaved, b[i])
		}
	}

	type stream struct {
		signer                                     string
		records, checkpoints, anchored, unanchored int
	}
	tests := []struct {
		name   string
		lines  func() []string
		strict bool
		want   []stream // when it verifies
		line   int      // when it fails
		reason string
	}{
		{name: "untouched", lines: func() []string { return lines },
			want: []stream{{backendID, 13, 3, 13, 0}}},
		{name: "untouched, strict", lines: func() []string { return lines }, strict: true,
			want: []stream{{backendID, 13, 3, 13, 0}}},
		{name: "deny flipped to allow and every hash recomputed", lines: func() []string {
			l := append([]string(nil), lines...)
			l[1] = flip(l[1])
			return rechain(t, l, false)
		}, line: 5, reason: "checkpoint covers seq 4 head"},
		{name: "a record deleted, another flipped, hashes and checkpoint heads recomputed", lines: func() []string {
			l := without(lines, func(i int, _ string) bool { return i == 2 })
			l[1] = flip(l[1])
			return rechain(t, l, true)
		}, line: 4, reason: "bad signature"},
		{name: "a record deleted after the first checkpoint, re-chained", lines: func() []string {
			return rechain(t, without(lines, func(i int, _ string) bool { return i == 6 }), true)
		}, line: 9, reason: "bad signature"},
		{name: "checkpoints stripped and re-chained", lines: func() []string {
			return rechain(t, without(lines, func(_ int, l string) bool { return event(t, l) == "checkpoint" }), false)
		}, line: 1, reason: `stream "shop/backend-0@1" has 10 records and no signed checkpoint`},
		{name: "signed by another CA of the same trust domain", lines: func() []string {
			return signedLog(t, foreign.Source(t, backendID), "shop/backend-0@3", 2, 100)
		}, line: 3, reason: "checkpoint signed by a certificate the trust bundle does not vouch for"},
		{name: "signed by a pod of another namespace", lines: func() []string {
			return signedLog(t, pki.Source(t, otherNSID), "shop/backend-0@3", 2, 100)
		}, line: 3, reason: `is signed by spiffe://cluster.local/ns/billing/sa/backend of namespace "billing", but its records (line 1) are of namespace "shop"`},
		{name: "SVID rotated mid-stream, same identity", lines: func() []string {
			return signedLog(t, rotated, "shop/backend-0@4", 6, 2)
		}, want: []stream{{backendID, 9, 3, 9, 0}}},
		{name: "signer changes mid-stream", lines: func() []string {
			return signedLog(t, switched, "shop/backend-0@5", 4, 2)
		}, line: 6, reason: "was signed by spiffe://cluster.local/ns/shop/sa/backend, now by spiffe://cluster.local/ns/shop/sa/cart: one stream, one signer"},
		{name: "tail cut after the last checkpoint", lines: func() []string { return lines[:12] },
			want: []stream{{backendID, 12, 2, 10, 2}}},
		{name: "tail cut after the last checkpoint, strict", lines: func() []string { return lines[:12] }, strict: true,
			line: 11, reason: "the last 2 records follow its last checkpoint (seq 10) and are not signed"},
		{name: "last checkpoint stripped, tail edited and re-chained: reported, not proven", lines: func() []string {
			l := append([]string(nil), lines[:12]...)
			l[11] = flip(l[11])
			return rechain(t, l, false)
		}, want: []stream{{backendID, 12, 2, 10, 2}}},
		{name: "a decision field smuggled into the last checkpoint", lines: func() []string {
			l := append([]string(nil), lines...)
			l[12] = rehash(t, strings.Replace(l[12], `"dryRun":false`, `"decision":"allow","dryRun":false`, 1))
			return l
		}, line: 13, reason: "a checkpoint with fields of a decision record"},
		{name: "an unknown field in the last checkpoint", lines: func() []string {
			l := append([]string(nil), lines...)
			l[12] = rehash(t, strings.Replace(l[12], `"dryRun":false`, `"dryRun":false,"note":"all allowed"`, 1))
			return l
		}, line: 13, reason: "not written as the writer writes it"},
		{name: "a duplicate event field in the last checkpoint", lines: func() []string {
			l := append([]string(nil), lines...)
			l[12] = rehash(t, strings.Replace(l[12], `"event":"checkpoint"`, `"event":"decision","event":"checkpoint"`, 1))
			return l
		}, line: 13, reason: "not written as the writer writes it"},
		{name: "checkpoint algorithm swapped", lines: func() []string {
			l := append([]string(nil), lines...)
			l[12] = rehash(t, strings.Replace(l[12], `"checkpoint.alg":"ecdsa-p256-sha256"`, `"checkpoint.alg":"ed25519"`, 1))
			return l
		}, line: 13, reason: `checkpoint.alg "ed25519" does not match the signing key (ecdsa-p256-sha256)`},
		{name: "checkpoint signer renamed", lines: func() []string {
			l := append([]string(nil), lines...)
			l[12] = rehash(t, strings.Replace(l[12], `"checkpoint.signer":"`+backendID, `"checkpoint.signer":"`+cartID, 1))
			return l
		}, line: 13, reason: `checkpoint.signer "spiffe://cluster.local/ns/shop/sa/cart" is not the certificate's identity`},
		{name: "checkpoint time moved", lines: func() []string {
			l := append([]string(nil), lines...)
			// A second later: still inside the SVID's validity.
			l[12] = rehash(t, regexp.MustCompile(`"time":"[^"]+"`).ReplaceAllStringFunc(l[12], func(f string) string {
				at, err := time.Parse(time.RFC3339Nano, f[len(`"time":"`):len(f)-1])
				if err != nil {
					t.Fatal(err)
				}
				return `"time":"` + at.Add(time.Second).Format(time.RFC3339Nano) + `"`
			}))
			return l
		}, line: 13, reason: "bad signature"},
		{name: "checkpoint fields grafted onto a decision", lines: func() []string {
			l := append([]string(nil), lines...)
			l[11] = rehash(t, strings.Replace(l[11], `"dryRun":false`, `"dryRun":false,"checkpoint.signer":"`+backendID+`"`, 1))
			return rechain(t, l, false)
		}, line: 12, reason: `a "decision" record with checkpoint fields`},
		{name: "another stream's checkpoint spliced in", lines: func() []string {
			l := append(append([]string(nil), lines[:4]...), strings.Replace(a[2], `"stream":"shop/backend-0@2"`, `"stream":"shop/backend-0@1"`, 1))
			return rechain(t, l, true)
		}, line: 5, reason: "bad signature"},
		{name: "records of another namespace added to the tail", lines: func() []string {
			l := append([]string(nil), lines...)
			l = append(l, strings.Replace(l[10], `"destination.namespace":"shop"`, `"destination.namespace":"billing"`, 1))
			return rechain(t, l, false)
		}, line: 14, reason: `destination.namespace "billing" in stream "shop/backend-0@1", whose records at line 1 are of namespace "shop"`},
		{name: "two streams interleaved in one file", lines: func() []string { return interleaved },
			want: []stream{{backendID, 8, 3, 8, 0}, {cartID, 4, 1, 4, 0}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res, err := verifySigned(tt.lines(), audit.VerifyOptions{Bundle: bundle, Strict: tt.strict})
			if tt.reason != "" {
				var ve *audit.VerifyError
				if !errors.As(err, &ve) || ve.Line != tt.line || !strings.Contains(ve.Reason, tt.reason) {
					t.Fatalf("Verify = %v; want line %d: …%s…", err, tt.line, tt.reason)
				}
				return
			}
			if err != nil {
				t.Fatalf("Verify: %v", err)
			}
			var got []stream
			for _, s := range res.Streams {
				got = append(got, stream{s.Signer.String(), s.Records, s.Checkpoints, s.Anchored, s.Unanchored})
			}
			if fmt.Sprint(got) != fmt.Sprint(tt.want) {
				t.Fatalf("streams = %+v, want %+v", got, tt.want)
			}
		})
	}

	// The hash chain alone cannot tell a re-chained log from the real one:
	// that is why checkpoints exist.
	forged := rechain(t, without(lines, func(_ int, l string) bool { return event(t, l) == "checkpoint" }), false)
	forged[1] = flip(forged[1])
	forged = rechain(t, forged, false)
	if _, err := verifySigned(forged, audit.VerifyOptions{ChainOnly: true}); err != nil {
		t.Fatalf("ChainOnly on a re-chained log: %v (the forgery was not well made)", err)
	}
	if _, err := verifySigned(lines, audit.VerifyOptions{}); err == nil || !strings.Contains(err.Error(), "Bundle is required") {
		t.Fatalf("Verify without a bundle = %v", err)
	}
}

// TestCheckpointMessage rebuilds the signed message from the documented
// format (docs/audit.md), not from the package, and checks the signature
// with the leaf's key alone: what an auditor with openssl does.
func TestCheckpointMessage(t *testing.T) {
	pki := testpki.New(t, "cluster.local")
	lines := signedLog(t, pki.Source(t, backendID), "shop/backend-0@2026-11-24T05:00:00Z", 2, 100)
	var prev struct {
		Seq  uint64
		Hash string
	}
	if err := json.Unmarshal([]byte(lines[1]), &prev); err != nil {
		t.Fatal(err)
	}
	var c struct {
		Stream string
		Time   string
		CSeq   uint64   `json:"checkpoint.seq"`
		Head   string   `json:"checkpoint.head"`
		Signer string   `json:"checkpoint.signer"`
		Alg    string   `json:"checkpoint.alg"`
		X5C    []string `json:"checkpoint.x5c"`
		Sig    string   `json:"checkpoint.sig"`
	}
	if err := json.Unmarshal([]byte(lines[2]), &c); err != nil {
		t.Fatal(err)
	}
	if c.CSeq != prev.Seq || c.Head != prev.Hash || c.Signer != backendID || c.Alg != "ecdsa-p256-sha256" || len(c.X5C) != 2 {
		t.Fatalf("checkpoint = %+v; previous record seq %d hash %s", c, prev.Seq, prev.Hash)
	}
	msg := "mesh.audit.v1 checkpoint\nstream " + c.Stream + "\nseq " + fmt.Sprint(prev.Seq) + "\nhead " + prev.Hash + "\ntime " + c.Time + "\n"
	der, err := base64.StdEncoding.DecodeString(c.X5C[0])
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	sig, err := base64.StdEncoding.DecodeString(c.Sig)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256sum([]byte(msg))
	if !ecdsa.VerifyASN1(leaf.PublicKey.(*ecdsa.PublicKey), sum, sig) {
		t.Fatalf("signature does not verify over the documented message:\n%s", msg)
	}
	if ecdsa.VerifyASN1(leaf.PublicKey.(*ecdsa.PublicKey), sha256sum([]byte(strings.Replace(msg, "seq 2", "seq 3", 1))), sig) {
		t.Fatal("signature verifies over another message")
	}
}

// TestCheckpointKeyTypes: every key type the mesh CA issues signs, and
// verifies, under its own algorithm.
func TestCheckpointKeyTypes(t *testing.T) {
	pki := testpki.New(t, "cluster.local")
	for _, tt := range []struct{ key, alg string }{
		{"p256", "ecdsa-p256-sha256"}, {"p384", "ecdsa-p384-sha384"}, {"ed25519", "ed25519"}, {"rsa2048", "rsa-pss-sha256"},
	} {
		t.Run(tt.key, func(t *testing.T) {
			svid := pki.SVIDWithKey(t, backendID, newKey(t, tt.key))
			lines := signedLog(t, &sequence{svids: []*x509svid.SVID{svid}}, "s", 3, 100)
			if !strings.Contains(lines[3], `"checkpoint.alg":"`+tt.alg+`"`) {
				t.Fatalf("checkpoint: %s; want alg %s", lines[3], tt.alg)
			}
			res, err := verifySigned(lines, audit.VerifyOptions{Bundle: pki.Bundle(), Strict: true})
			if err != nil || res.Streams[0].Signer.String() != backendID {
				t.Fatalf("Verify = %+v, %v", res, err)
			}
			// The signature is over this stream's head: another head fails.
			forged := append([]string(nil), lines...)
			forged[2] = flip(forged[2])
			if _, err := verifySigned(rechain(t, forged, true), audit.VerifyOptions{Bundle: pki.Bundle()}); err == nil || !strings.Contains(err.Error(), "line 4: signer "+backendID+": bad signature") {
				t.Fatalf("re-chained %s log: %v", tt.key, err)
			}
		})
	}
}

// TestCheckpointRefusals: a writer that cannot sign writes its records
// anyway, unanchored, and says why in a log line and a metric.
func TestCheckpointRefusals(t *testing.T) {
	pki := testpki.New(t, "cluster.local")
	good := pki.SVID(t, backendID)
	other := pki.SVID(t, backendID)
	for _, tt := range []struct {
		name string
		svid *x509svid.SVID // nil: the source has none
		why  string
	}{
		{"no SVID", nil, "no SVID: sequence: no SVID"},
		{"key of another certificate", &x509svid.SVID{ID: good.ID, Certificates: good.Certificates, PrivateKey: other.PrivateKey}, "the private key does not match the certificate"},
		{"P-521 key", selfSigned(t, backendID, newKey(t, "p521")), "ECDSA curve P-521 is not supported (P-256, P-384)"},
		{"RSA-1024 key", selfSigned(t, backendID, newKey(t, "rsa1024")), "RSA key of 1024 bits is too short"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			src := &sequence{}
			if tt.svid != nil {
				src.svids = []*x509svid.SVID{tt.svid}
			}
			var buf, logs bytes.Buffer
			reg := prometheus.NewRegistry()
			w, err := audit.New(audit.Config{Out: &buf, Stream: "s", SVIDs: src, CheckpointEvery: 2, Registerer: reg, Logger: slog.New(slog.NewTextHandler(&logs, nil))})
			if err != nil {
				t.Fatal(err)
			}
			for i := range 5 {
				w.Write(record(i))
			}
			ctx, cancel := context.WithCancel(context.Background())
			cancel()
			if err := w.Run(ctx); err != nil {
				t.Fatal(err)
			}
			// Tried at 2 records, at 2+2, and at shutdown.
			if got := counter(t, reg, audit.MetricCheckpointFailures); got != 3 {
				t.Errorf("%s = %v, want 3", audit.MetricCheckpointFailures, got)
			}
			if got := counter(t, reg, audit.MetricRecords); got != 5 {
				t.Errorf("%s = %v, want 5", audit.MetricRecords, got)
			}
			if !strings.Contains(logs.String(), "not anchored") || !strings.Contains(logs.String(), tt.why) {
				t.Errorf("log = %q; want the reason %q", logs.String(), tt.why)
			}
			if _, err := audit.Verify(bytes.NewReader(buf.Bytes()), audit.VerifyOptions{ChainOnly: true}); err != nil {
				t.Fatalf("the records are not a valid chain: %v", err)
			}
			_, err = audit.Verify(bytes.NewReader(buf.Bytes()), audit.VerifyOptions{Bundle: pki.Bundle()})
			if err == nil || !strings.Contains(err.Error(), `line 1: stream "s" has 5 records and no signed checkpoint`) {
				t.Fatalf("Verify = %v; want: no signed checkpoint", err)
			}
		})
	}
}

// TestRefusedRecords: refusals carry how many similar ones were
// suppressed; the writer's own events cannot be forged through Write; a
// record without a time gets the time it was written.
func TestRefusedRecords(t *testing.T) {
	pki := testpki.New(t, "cluster.local")
	var buf bytes.Buffer
	w, err := audit.New(audit.Config{Out: &buf, Stream: "s", SVIDs: pki.Source(t, backendID)})
	if err != nil {
		t.Fatal(err)
	}
	w.Write(audit.Record{Event: "refused", Reason: "plaintext in strict mode", SourceIP: "198.18.0.9", DestinationNamespace: "shop", DestinationPort: 8080, Suppressed: 41})
	w.Write(audit.Record{Event: "checkpoint", Decision: "allow"})
	w.Write(audit.Record{Event: "gap", Dropped: 1000})
	w.Write(record(1))
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := w.Run(ctx); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSuffix(buf.String(), "\n"), "\n")
	// The gap goes before the first record the writer takes after the
	// loss, which may have been queued before it.
	want := []string{`"event":"gap"`, `"event":"refused"`, `"event":"decision"`, `"event":"checkpoint"`}
	if len(lines) != len(want) {
		t.Fatalf("%d lines, want %d:\n%s", len(lines), len(want), buf.String())
	}
	for i, w := range want {
		if !strings.Contains(lines[i], w) {
			t.Errorf("line %d = %s; want %s", i+1, lines[i], w)
		}
	}
	if !strings.Contains(lines[1], `"suppressed":41`) || !strings.Contains(lines[0], `"dropped":2`) || strings.Contains(lines[1], `"time":"0001-`) {
		t.Errorf("refusal or gap lost its count:\n%s", buf.String())
	}
	res, err := audit.Verify(&buf, audit.VerifyOptions{Bundle: pki.Bundle(), Strict: true})
	if err != nil || res.Gaps != 1 || res.Dropped != 2 || res.Streams[0].Checkpoints != 1 {
		t.Fatalf("Verify = %+v, %v", res, err)
	}
}

// counter reads a counter from a registry.
func counter(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			return mf.GetMetric()[0].GetCounter().GetValue()
		}
	}
	t.Fatalf("no metric %s", name)
	return 0
}

// lockedBuffer is written by Run while the test reads it.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func (l *lockedBuffer) count(s string) int { return strings.Count(l.String(), s) }

// TestCheckpointByAppSVIDRefused: the app's SVID (the Workload API's,
// marked by the CA) has the pod's identity and a valid chain, but its key
// is the app's: a log whose checkpoints it signed does not verify; the
// same log signed by an unmarked SVID of the same identity does.
func TestCheckpointByAppSVIDRefused(t *testing.T) {
	pki := testpki.New(t, "cluster.local")
	app := pki.SVIDFor(t, backendID, newKey(t, "p256"), &x509.CertificateRequest{ExtraExtensions: []pkix.Extension{appsvid.Request()}})
	for _, tc := range []struct {
		name string
		svid *x509svid.SVID
		want string // "" verifies
	}{
		{"the proxy's", pki.SVID(t, backendID), ""},
		{"the app's", app, "signed with the SVID of the pod's application (Workload API), not its proxy's"},
	} {
		lines := signedLog(t, &sequence{svids: []*x509svid.SVID{tc.svid}}, "shop/backend-0@t", 4, 2)
		_, err := audit.Verify(strings.NewReader(strings.Join(lines, "\n")+"\n"), audit.VerifyOptions{Bundle: pki.Bundle()})
		if (tc.want == "" && err != nil) || (tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want))) {
			t.Errorf("%s: Verify = %v, want %q", tc.name, err, tc.want)
		}
	}
}
