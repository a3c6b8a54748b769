package meshctl_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/pem"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/mesh-dev/mesh/authz/audit"
	"github.com/mesh-dev/mesh/internal/testpki"
	"github.com/mesh-dev/mesh/meshctl"
)

func run(stdin []byte, args ...string) (string, error) {
	cmd := meshctl.New()
	var out bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetErr(&out)
	cmd.SetIn(bytes.NewReader(stdin))
	cmd.SetArgs(args)
	err := cmd.Execute()
	return out.String(), err
}

// writeLog writes n deny records of namespace shop through a real Writer
// signing with an SVID of id from pki (none if pki is nil), checkpointing
// every 2 records and at shutdown.
func writeLog(t *testing.T, pki *testpki.PKI, id, stream string, n int) []byte {
	t.Helper()
	cfg := audit.Config{Out: new(bytes.Buffer), Stream: stream, CheckpointEvery: 2, Logger: slog.New(slog.DiscardHandler)}
	if pki != nil {
		cfg.SVIDs = pki.Source(t, id)
	}
	w, err := audit.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	for i := range n {
		w.Write(audit.Record{Time: time.Unix(int64(i), 0).UTC(), Decision: "deny", Policy: "shop/p", DestinationNamespace: "shop", DestinationPod: "backend-0"})
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := w.Run(ctx); err != nil {
		t.Fatal(err)
	}
	return cfg.Out.(*bytes.Buffer).Bytes()
}

// rechain recomputes every prevHash and hash of a one-stream log, as a
// forger who edited it would.
func rechain(log []byte) []byte {
	prevRE := regexp.MustCompile(`"prevHash":"[0-9a-f]{64}"`)
	prev := audit.Genesis
	var out bytes.Buffer
	for _, l := range strings.Split(strings.TrimSuffix(string(log), "\n"), "\n") {
		l = prevRE.ReplaceAllString(l, `"prevHash":"`+prev+`"`)
		body := l[:strings.LastIndex(l, `,"hash":"`)] + "}"
		sum := sha256.Sum256([]byte(body))
		prev = hex.EncodeToString(sum[:])
		out.WriteString(body[:len(body)-1] + `,"hash":"` + prev + `"}` + "\n")
	}
	return out.Bytes()
}

func writeFile(t *testing.T, name string, b []byte) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func bundlePEM(t *testing.T, pki *testpki.PKI) string {
	t.Helper()
	var b []byte
	for _, c := range pki.CA.Bundle() {
		b = append(b, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
	}
	return writeFile(t, "bundle.pem", b)
}

func TestAuditVerify(t *testing.T) {
	const backend = "spiffe://cluster.local/ns/shop/sa/backend"
	pki := testpki.New(t, "cluster.local")
	bundle := bundlePEM(t, pki)
	foreignBundle := bundlePEM(t, testpki.New(t, "cluster.local"))

	// 3 records: checkpoints after the 2nd and at shutdown, 5 lines.
	signed := writeLog(t, pki, backend, "shop/backend-0", 3)
	good := writeFile(t, "good.log", signed)
	lines := strings.SplitAfter(string(signed), "\n")
	cut := writeFile(t, "cut.log", []byte(strings.Join(lines[:4], "")))
	forged := writeFile(t, "forged.log", rechain(bytes.Replace(signed, []byte(`"decision":"deny"`), []byte(`"decision":"allow"`), 1)))
	edited := writeFile(t, "edited.log", bytes.Replace(signed, []byte(`"policy":"shop/p"`), []byte(`"policy":"shop/q"`), 1))
	unsignedLog := writeLog(t, nil, "", "shop/backend-0", 3)
	unsigned := writeFile(t, "unsigned.log", unsignedLog)
	unsignedForged := writeFile(t, "unsigned-forged.log", rechain(bytes.Replace(unsignedLog, []byte(`"decision":"deny"`), []byte(`"decision":"allow"`), 1)))
	two := writeFile(t, "two.log", append(append([]byte(nil), signed...), writeLog(t, pki, "spiffe://cluster.local/ns/shop/sa/cart", "shop/cart-0", 1)...))

	tests := []struct {
		name  string
		stdin []byte
		args  []string
		out   string // exact output when it succeeds
		err   string // part of the error when it fails
	}{
		{name: "untouched log names its signer", args: []string{"--bundle", bundle, good}, out: good + `: OK: 5 records in 1 streams
` + good + `: stream "shop/backend-0": 5 records, 2 checkpoints signed by spiffe://cluster.local/ns/shop/sa/backend, 0 unanchored after the last checkpoint
`},
		{name: "standard input", stdin: signed, args: []string{"--bundle", bundle, "--strict", "-"}, out: `-: OK: 5 records in 1 streams
-: stream "shop/backend-0": 5 records, 2 checkpoints signed by spiffe://cluster.local/ns/shop/sa/backend, 0 unanchored after the last checkpoint
`},
		{name: "two streams", args: []string{"--bundle", bundle, two}, out: two + `: OK: 7 records in 2 streams
` + two + `: stream "shop/backend-0": 5 records, 2 checkpoints signed by spiffe://cluster.local/ns/shop/sa/backend, 0 unanchored after the last checkpoint
` + two + `: stream "shop/cart-0": 2 records, 1 checkpoints signed by spiffe://cluster.local/ns/shop/sa/cart, 0 unanchored after the last checkpoint
`},
		{name: "tail cut after the last checkpoint is reported", args: []string{"--bundle", bundle, cut}, out: cut + `: OK: 4 records in 1 streams
` + cut + `: stream "shop/backend-0": 4 records, 1 checkpoints signed by spiffe://cluster.local/ns/shop/sa/backend, 1 unanchored after the last checkpoint
`},
		{name: "tail cut after the last checkpoint fails with --strict", args: []string{"--bundle", bundle, "--strict", cut},
			err: cut + `: audit: line 4: stream "shop/backend-0": the last 1 records follow its last checkpoint (seq 3) and are not signed`},
		{name: "deny flipped and re-chained", args: []string{"--bundle", bundle, good, forged},
			err: forged + ": audit: line 3: checkpoint covers seq 2 head"},
		{name: "edited line", args: []string{"--bundle", bundle, edited}, err: edited + ": audit: line 1: hash mismatch"},
		{name: "log without checkpoints", args: []string{"--bundle", bundle, unsigned},
			err: unsigned + `: audit: line 1: stream "shop/backend-0" has 3 records and no signed checkpoint`},
		{name: "bundle of another CA", args: []string{"--bundle", foreignBundle, good},
			err: good + ": audit: line 3: checkpoint signed by a certificate the trust bundle does not vouch for"},
		{name: "another trust domain", args: []string{"--bundle", bundle, "--trust-domain", "example.org", good},
			err: good + `: audit: line 3: checkpoint signed by a certificate the trust bundle does not vouch for`},
		{name: "chain only", args: []string{"--chain-only", good}, out: good + `: OK: 5 records in 1 streams
` + good + `: stream "shop/backend-0": 5 records, hash chain only (signatures not checked)
`},
		{name: "chain only passes a re-chained log without checkpoints", args: []string{"--chain-only", unsignedForged}, out: unsignedForged + `: OK: 3 records in 1 streams
` + unsignedForged + `: stream "shop/backend-0": 3 records, hash chain only (signatures not checked)
`},
		{name: "which the signature check fails", args: []string{"--bundle", bundle, unsignedForged}, err: "no signed checkpoint"},
		{name: "bundle required", args: []string{good}, err: "--bundle is required"},
		{name: "chain only excludes strict", args: []string{"--chain-only", "--strict", good}, err: "--chain-only checks no signatures"},
		{name: "bundle without certificates", args: []string{"--bundle", writeFile(t, "empty.pem", nil), good}, err: "--bundle"},
		{name: "missing file", args: []string{"--bundle", bundle, "/nonexistent/audit.log"}, err: "/nonexistent/audit.log: open"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, err := run(tt.stdin, append([]string{"audit", "verify"}, tt.args...)...)
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("error = %v; want …%s…", err, tt.err)
				}
				return
			}
			if err != nil || out != tt.out {
				t.Fatalf("output:\n%s\nerror: %v\nwant:\n%s", out, err, tt.out)
			}
		})
	}
}
