package meshctl_test

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mesh-dev/mesh/authz/audit"
	"github.com/mesh-dev/mesh/meshctl"
)

func run(args ...string) (string, error) {
	cmd := meshctl.New()
	var out bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetErr(&out)
	cmd.SetArgs(args)
	err := cmd.Execute()
	return out.String(), err
}

func TestAuditVerify(t *testing.T) {
	var buf bytes.Buffer
	w, err := audit.New(audit.Config{Out: &buf, Stream: "shop/backend-0"})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		w.Write(audit.Record{Time: time.Unix(int64(i), 0).UTC(), Decision: "deny", Policy: "shop/p"})
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := w.Run(ctx); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	good := filepath.Join(dir, "good.log")
	os.WriteFile(good, buf.Bytes(), 0o644)
	out, err := run("audit", "verify", good)
	if err != nil || !strings.Contains(out, "OK: 3 records in 1 streams") {
		t.Fatalf("verify untouched = %q, %v", out, err)
	}

	bad := filepath.Join(dir, "bad.log")
	os.WriteFile(bad, bytes.Replace(buf.Bytes(), []byte(`"policy":"shop/p"`), []byte(`"policy":"shop/q"`), 1), 0o644)
	_, err = run("audit", "verify", bad)
	if err == nil || !strings.Contains(err.Error(), "line 1: hash mismatch") {
		t.Fatalf("verify edited = %v; want line 1: hash mismatch", err)
	}
}
