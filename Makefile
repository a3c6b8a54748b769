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

# GO_BUILD_FLAGS are those of every build of mesh's binaries. grpcnotrace is
# grpc's own build tag: it leaves out golang.org/x/net/trace and, with it,
# html/template, which cost mesh-proxy 6.4 MB of binary and 3.1-3.3 MiB of
# idle RSS. bench/setup.go and cmd/*/Dockerfile pass the same tag;
# TestShippedBuildsUseTags (meshproxy) fails if any of them stops.
GO_BUILD_FLAGS := -trimpath -tags grpcnotrace

.PHONY: all build test unit deps tools cluster-up cluster-down demo demo-down bench fuzz vet generate clean netcheck

all: build

deps:
	@hack/deps.sh

tools: deps
	@hack/tools.sh

build:
	@mkdir -p bin
	@echo "build: compiling mesh's binaries into bin/ (a minute or two on a cold cache)" >&2
	$(GO) build $(GO_BUILD_FLAGS) -o bin/ $(patsubst %,./%/...,$(wildcard cmd e2e/cmd))

# test runs everything: unit tests, fuzz seeds, and the end-to-end tests on a
# real local cluster. MESH_E2E=require turns a missing prerequisite into a
# failure instead of a skip.
test: tools build netcheck
	$(GO) vet ./...
	@mkdir -p .cache
	MESH_E2E=require $(GO) test $(GOTEST_FLAGS) ./... 2>&1 | tee .cache/test.log; exit $${PIPESTATUS[0]}

# netcheck refuses to start the tests while a cluster from cluster-up or
# demo holds the machine's pod network: the tests' node agents would wait
# for it (one bridge per machine).
netcheck:
	@for d in $(CLUSTER_DIR) $(CURDIR)/.cache/demo/cluster; do \
	  if [ -s $$d/ready ] && [ -f $$d/pids/supervisor.pid ] && kill -0 $$(cut -d' ' -f1 $$d/pids/supervisor.pid) 2>/dev/null; then \
	    echo "a local cluster is running in $$d and holds the pod network: stop it first (make cluster-down / make demo-down)" >&2; exit 1; fi; done

# unit runs only the tests that need no cluster, no root and no tools.
unit:
	$(GO) test -count=1 -short ./...

vet:
	$(GO) vet ./...

# cluster-up starts the local cluster in the background: the control plane,
# and a node agent (root) running kube-proxy, CoreDNS and your pods.
cluster-up: tools build
	@bin/mesh-cluster up --dir $(CLUSTER_DIR) --background

cluster-down:
	@if [ -x bin/mesh-cluster ]; then bin/mesh-cluster down --dir $(CLUSTER_DIR); \
	else $(GO) run ./e2e/cmd/mesh-cluster down --dir $(CLUSTER_DIR); fi

# demo starts the local cluster, installs mesh with helm, deploys a small
# app and a policy set from examples/, narrates what the mesh does, and
# leaves the cluster running (needs root: network namespaces and a bridge).
demo: tools build
	@bin/mesh-demo up --dir $(CURDIR)/.cache/demo

demo-down:
	@if [ -x bin/mesh-demo ]; then bin/mesh-demo down --dir $(CURDIR)/.cache/demo; \
	else $(GO) run ./e2e/cmd/mesh-demo down --dir $(CURDIR)/.cache/demo; fi

# bench measures the data plane side by side with HAProxy and NGINX, on
# loopback, and the control plane (SVID issuance, Certify on the local
# cluster, a policy push to 1,000 proxies), in under 20 minutes, and
# rewrites docs/benchmarks.md's generated section and bench/results.json
# (go run ./bench -help). It installs fortio, haproxy and nginx when
# missing (as root); tools builds the local cluster's kube-apiserver. Not
# part of test. BENCH_FLAGS=-quick is a smoke run that writes to
# .cache/bench only.
BENCH_FLAGS ?=
bench: tools
	$(GO) run ./bench $(BENCH_FLAGS)

FUZZTIME ?= 30s
fuzz:
	@for pkg in $$($(GO) list ./...); do \
	  for f in $$($(GO) test -list '^Fuzz' $$pkg | grep '^Fuzz'); do \
	    echo "fuzz $$pkg $$f"; $(GO) test -run '^$$' -fuzz "^$$f$$" -fuzztime $(FUZZTIME) $$pkg || exit 1; \
	  done; done

clean:
	rm -rf bin
