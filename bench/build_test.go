package main

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/mesh-dev/mesh/e2e/prereq"
)

// TestBuildMeshProxy: the benchmark measures mesh-proxy as it ships, built
// with exactly the Makefile's GO_BUILD_FLAGS: buildFlags must be those
// words, in order, and the binary it builds must carry the settings they
// make and no others (go version -m reads them back from the binary). A
// change to the Makefile's flags that the harness does not follow fails
// here.
func TestBuildMeshProxy(t *testing.T) {
	if testing.Short() {
		t.Skip("builds mesh-proxy")
	}
	makeFlags := strings.Fields(makeVariable(t, prereq.RepoRoot(), "GO_BUILD_FLAGS"))
	if len(makeFlags) == 0 {
		t.Fatal("the Makefile's GO_BUILD_FLAGS is empty")
	}
	if !slices.Equal(buildFlags, makeFlags) {
		t.Errorf("bench builds mesh-proxy with %q, the Makefile's GO_BUILD_FLAGS are %q", buildFlags, makeFlags)
	}
	want, err := buildSettings(makeFlags)
	if err != nil {
		t.Fatal(err)
	}

	bin := filepath.Join(t.TempDir(), "mesh-proxy")
	if err := buildMeshProxy(context.Background(), bin); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("go", "version", "-m", bin).CombinedOutput()
	if err != nil {
		t.Fatalf("go version -m: %v\n%s", err, out)
	}
	got := map[string]string{}
	for _, line := range strings.Split(string(out), "\n") {
		// "\tbuild\t-tags=grpcnotrace"; a value holding spaces, as
		// -ldflags' may, is quoted.
		kind, setting, ok := strings.Cut(strings.TrimSpace(line), "\t")
		if !ok || kind != "build" || !strings.HasPrefix(setting, "-") {
			continue // GOOS, CGO_ENABLED, vcs.*: not flags
		}
		k, v, _ := strings.Cut(setting, "=")
		if u, err := strconv.Unquote(v); err == nil {
			v = u
		}
		got[k] = v
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("mesh-proxy built with %s=%q, want %q from GO_BUILD_FLAGS %q (flag settings: %v)", k, got[k], v, makeFlags, got)
		}
	}
	for k, v := range got {
		if _, ok := want[k]; !ok {
			t.Errorf("mesh-proxy built with %s=%q, which GO_BUILD_FLAGS %q does not ask for", k, v, makeFlags)
		}
	}
}

// makeVariable is a variable of dir's Makefile as make itself evaluates it.
// That is sturdier than reading the assignment's line: a later +=, an
// override, a conditional or a reference to another variable counts as it
// does for make build. The recipe, added with --eval (GNU make 3.82 or
// later), prints the value with $(info), so no shell quoting is involved.
// MAKEFLAGS and the like are dropped: under make test they would carry the
// outer make's command-line variables, and this reads the Makefile as
// committed.
func makeVariable(t *testing.T, dir, name string) string {
	t.Helper()
	goal := "mesh-bench-print-" + name
	cmd := exec.Command("make", "-s", "--no-print-directory", "-C", dir, "-f", "Makefile",
		"--eval", goal+": ; @: $(info $("+name+"))", goal)
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		if k != "MAKEFLAGS" && k != "MFLAGS" && k != "MAKELEVEL" && k != name {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("make: reading %s from %s/Makefile: %v\n%s", name, dir, err, stderr.String())
	}
	return strings.TrimSuffix(string(out), "\n")
}

// buildSettings are the build settings go version -m shows for a build
// with flags: go build records its -buildmode and -compiler always, and
// these flags when given. A flag it does not know is an error, so that a
// new one in GO_BUILD_FLAGS makes this test learn how go records it
// rather than pass without checking it.
func buildSettings(flags []string) (map[string]string, error) {
	out := map[string]string{"-buildmode": "exe", "-compiler": "gc"}
	for i := 0; i < len(flags); i++ {
		f := flags[i]
		name, value, hasValue := strings.Cut(f, "=")
		switch name {
		case "-trimpath", "-race", "-msan", "-asan":
			if hasValue {
				out[name] = value
			} else {
				out[name] = "true"
			}
		case "-tags", "-ldflags", "-gcflags", "-asmflags", "-buildmode", "-compiler":
			if !hasValue {
				if i+1 == len(flags) {
					return nil, &flagError{f, "has no value"}
				}
				i++
				value = flags[i]
			}
			out[name] = value
		default:
			return nil, &flagError{f, "is not one this test knows how go version -m records"}
		}
	}
	return out, nil
}

type flagError struct{ flag, what string }

func (e *flagError) Error() string { return "bench: GO_BUILD_FLAGS: " + e.flag + " " + e.what }

func TestBuildSettings(t *testing.T) {
	tests := []struct {
		flags   string
		want    map[string]string
		wantErr string
	}{
		{"-trimpath -tags grpcnotrace", map[string]string{"-buildmode": "exe", "-compiler": "gc", "-trimpath": "true", "-tags": "grpcnotrace"}, ""},
		{"-tags=a,b -trimpath=false", map[string]string{"-buildmode": "exe", "-compiler": "gc", "-trimpath": "false", "-tags": "a,b"}, ""},
		{"-buildmode pie -ldflags=-s", map[string]string{"-buildmode": "pie", "-compiler": "gc", "-ldflags": "-s"}, ""},
		{"-trimpath -tags", nil, "bench: GO_BUILD_FLAGS: -tags has no value"},
		{"-pgo=auto", nil, "bench: GO_BUILD_FLAGS: -pgo=auto is not one this test knows how go version -m records"},
	}
	for _, tc := range tests {
		got, err := buildSettings(strings.Fields(tc.flags))
		if tc.wantErr != "" {
			if err == nil || err.Error() != tc.wantErr {
				t.Errorf("buildSettings(%q) error %v, want %q", tc.flags, err, tc.wantErr)
			}
			continue
		}
		if err != nil {
			t.Errorf("buildSettings(%q): %v", tc.flags, err)
			continue
		}
		if len(got) != len(tc.want) {
			t.Errorf("buildSettings(%q) = %v, want %v", tc.flags, got, tc.want)
		}
		for k, v := range tc.want {
			if got[k] != v {
				t.Errorf("buildSettings(%q)[%s] = %q, want %q", tc.flags, k, got[k], v)
			}
		}
	}
}
