package audit_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/mesh-dev/mesh/authz/audit"
)

func record(i int) audit.Record {
	return audit.Record{
		Time: time.Date(2026, 11, 24, 5, 0, i, 0, time.UTC), Decision: "deny", Policy: "shop/no-admin", Rule: "0",
		Reason: "matched a DENY rule", SourceIdentity: "spiffe://cluster.local/ns/shop/sa/frontend", SourceIP: "198.18.0.7",
		DestinationNamespace: "shop", DestinationPod: "backend-0", DestinationPort: 8080,
		Protocol: "http1", HTTPMethod: "GET", HTTPPath: "/api/admin", HTTPStatus: 403,
	}
}

// writeLog writes n records through a real Writer and returns the lines.
func writeLog(t *testing.T, stream string, n int) []string {
	t.Helper()
	var buf bytes.Buffer
	w, err := audit.New(audit.Config{Out: &buf, Stream: stream})
	if err != nil {
		t.Fatal(err)
	}
	for i := range n {
		w.Write(record(i))
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel() // Run drains what is queued, then returns.
	if err := w.Run(ctx); err != nil {
		t.Fatal(err)
	}
	return strings.Split(strings.TrimSuffix(buf.String(), "\n"), "\n")
}

// verify checks the hash chain only: these logs have no checkpoints
// (checkpoint_test.go covers those).
func verify(lines []string) (audit.Result, error) {
	return audit.Verify(strings.NewReader(strings.Join(lines, "\n")+"\n"), audit.VerifyOptions{ChainOnly: true})
}

func TestUntouchedLogVerifies(t *testing.T) {
	lines := writeLog(t, "shop/backend-0@2026-11-24T05:00:00Z", 5)
	res, err := verify(lines)
	if err != nil || res.Records != 5 || len(res.Streams) != 1 {
		t.Fatalf("Verify = %+v, %v", res, err)
	}
	// The schema's fields are all there.
	for _, field := range []string{`"type":"mesh.audit.v1"`, `"time":`, `"decision":"deny"`, `"dryRun":false`, `"policy":"shop/no-admin"`, `"rule":"0"`, `"reason":`, `"source.identity":`, `"source.ip":"198.18.0.7"`, `"destination.namespace":"shop"`, `"destination.pod":"backend-0"`, `"destination.port":8080`, `"protocol":"http1"`, `"http.method":"GET"`, `"http.path":"/api/admin"`, `"http.status":403`, `"seq":1`, `"prevHash":"` + audit.Genesis + `"`, `"hash":"`} {
		if !strings.Contains(lines[0], field) {
			t.Errorf("first record lacks %s:\n%s", field, lines[0])
		}
	}
	// Two streams in one file verify independently.
	both := append(writeLog(t, "a", 2), writeLog(t, "b", 2)...)
	if res, err := verify(both); err != nil || len(res.Streams) != 2 {
		t.Fatalf("two streams: %+v, %v", res, err)
	}
}

func TestTamperingDetected(t *testing.T) {
	lines := writeLog(t, "s", 6)
	tests := []struct {
		name   string
		mutate func([]string) []string
		line   int
		reason string
	}{
		{"edited field", func(l []string) []string {
			l[2] = strings.Replace(l[2], `"decision":"deny"`, `"decision":"allow"`, 1)
			return l
		}, 3, "hash mismatch"},
		{"edited field with the hash recomputed is still caught by the chain", func(l []string) []string {
			l[2] = rehash(t, strings.Replace(l[2], `"decision":"deny"`, `"decision":"allow"`, 1))
			return l
		}, 4, "prevHash does not match"},
		{"deleted line", func(l []string) []string { return append(l[:3:3], l[4:]...) }, 4, "seq 5 follows seq 3"},
		{"swapped lines", func(l []string) []string { l[1], l[2] = l[2], l[1]; return l }, 2, "seq 3 follows seq 1"},
		{"deleted first line", func(l []string) []string { return l[1:] }, 1, "starts at seq 2"},
		{"garbage line", func(l []string) []string { l[0] = "not json"; return l }, 1, "no hash"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := verify(tt.mutate(append([]string(nil), lines...)))
			var ve *audit.VerifyError
			if !errors.As(err, &ve) || ve.Line != tt.line || !strings.Contains(ve.Reason, tt.reason) {
				t.Fatalf("Verify = %v; want line %d: %s", err, tt.line, tt.reason)
			}
		})
	}
}

// rehash recomputes a line's own hash, as a forger who knows the scheme
// would; the next record's prevHash still exposes the edit.
func rehash(t *testing.T, l string) string {
	t.Helper()
	i := strings.LastIndex(l, `,"hash":"`)
	body := l[:i] + "}"
	return body[:len(body)-1] + `,"hash":"` + sha256hex(body) + `"}`
}

// TestDropsBecomeGaps: a writer that falls behind drops records without
// blocking, and the gap is itself a record in the chain.
func TestDropsBecomeGaps(t *testing.T) {
	var buf bytes.Buffer
	w, err := audit.New(audit.Config{Out: &buf, Stream: "s", Buffer: 2})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		for i := range 10 { // Run is not running: only 2 fit.
			w.Write(record(i))
		}
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Write blocked")
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := w.Run(ctx); err != nil {
		t.Fatal(err)
	}
	res, err := audit.Verify(&buf, audit.VerifyOptions{ChainOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	if res.Gaps != 1 || res.Dropped != 8 || res.Records != 3 {
		t.Fatalf("Verify = %+v; want 2 records and 1 gap of 8", res)
	}
}

func sha256hex(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:])
}
