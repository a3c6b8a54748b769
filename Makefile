# mesh: zero-trust mutual-TLS identity mesh for Kubernetes.
#
# Every target installs what it needs on a fresh Debian machine when run as
# root (hack/deps.sh, hack/tools.sh), and otherwise says what to install.

SHELL := /bin/bash
GO ?= go
export PATH := /usr/local/go/bin:$(PATH)

# Where tests and the local cluster find the pinned external programs and
# mesh's own binaries.
export MESH_TOOLS_DIR := $(CURDIR)/.cache/bin
export MESH_BIN_DIR := $(CURDIR)/bin
CLUSTER_DIR ?= $(CURDIR)/.cache/cluster

GOTEST_FLAGS ?= -race -count=1 -timeout 35m

.PHONY: all build test unit deps tools cluster-up cluster-down demo bench fuzz vet generate clean

all: build

deps:
	@hack/deps.sh

tools: deps
	@hack/tools.sh

build:
	@mkdir -p bin
	$(GO) build -trimpath -o bin/ $(patsubst %,./%/...,$(wildcard cmd e2e/cmd))

# test runs everything: unit tests, fuzz seeds, and the end-to-end tests on a
# real local cluster. MESH_E2E=require turns a missing prerequisite into a
# failure instead of a skip.
test: tools build
	$(GO) vet ./...
	@mkdir -p .cache
	MESH_E2E=require $(GO) test $(GOTEST_FLAGS) ./... 2>&1 | tee .cache/test.log; exit $${PIPESTATUS[0]}

# unit runs only the tests that need no cluster, no root and no tools.
unit:
	$(GO) test -count=1 -short ./...

vet:
	$(GO) vet ./...

cluster-up: tools build
	@bin/mesh-cluster up --dir $(CLUSTER_DIR) --background

cluster-down:
	@if [ -x bin/mesh-cluster ]; then bin/mesh-cluster down --dir $(CLUSTER_DIR); \
	else $(GO) run ./e2e/cmd/mesh-cluster down --dir $(CLUSTER_DIR); fi

# demo runs the mesh end to end on the local cluster (needs root: it makes
# network namespaces and a bridge), narrating each step.
demo: tools build
	@bin/mesh-demo --dir $(CURDIR)/.cache/demo

# bench measures the data plane side by side with HAProxy and NGINX, on
# loopback, in under 20 minutes, and rewrites docs/benchmarks.md's
# generated section and bench/results.json (go run ./bench -help). It
# installs fortio, haproxy and nginx when missing (as root). Not part of
# test. BENCH_FLAGS=-quick is a smoke run that writes to .cache/bench only.
BENCH_FLAGS ?=
bench:
	$(GO) run ./bench $(BENCH_FLAGS)

FUZZTIME ?= 30s
fuzz:
	@for pkg in $$($(GO) list ./...); do \
	  for f in $$($(GO) test -list '^Fuzz' $$pkg | grep '^Fuzz'); do \
	    echo "fuzz $$pkg $$f"; $(GO) test -run '^$$' -fuzz "^$$f$$" -fuzztime $(FUZZTIME) $$pkg || exit 1; \
	  done; done

clean:
	rm -rf bin
