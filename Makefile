# igdeadlock: an Inspektor Gadget gadget that finds deadlocks, and its Python companion.
#
#   make setup       install what is missing (Debian packages, ig, the Python virtualenv)
#   make gadget      build the gadget image (only when its sources changed)
#   make test        set up, build, run the whole test suite (but tests/k8s)
#   make load-test   the gadget's programs load here, with stack and complexity headroom
#   make kernels     fetch Debian's kernels of the kernel matrix (tools/kernels/kernels.txt)
#   make test-kernels  boot each in a guest and test the gadget there (KERNELS="6.1 5.10": some)
#   make test-k8s    the cluster up, then end-to-end tests against it (tests/k8s)
#   make test-k8s-kernel  the same cluster in a guest of a kernel with kprobes (K8S_KERNEL=6.1): kubectl gadget run alone
#   make demo        set up, build, trace an example program with a lock-order inversion
#   make bench       measure the cost of tracing (BPF time per lock/unlock pair) and the analysis
#   make soak        watch this host for SOAK_MINUTES (30) under load, its daemon killed once
#   make diagrams    regenerate DEVELOPER.md's program-map diagrams from the built image
#   make containers  start Docker and build the test images (igdeadlock-test/glibc, /musl)
#   make lint        ruff, mypy, and clang-format in Inspektor Gadget's style
#   make cluster     a single-node Kubernetes cluster here, with Inspektor Gadget deployed
#                    (kubectl: build/cluster/kubeconfig; tools/cluster/); make cluster-down stops it
#
# Everything here runs as root: eBPF and `ig daemon` need it.

SHELL := /bin/bash
.DEFAULT_GOAL := help

IMAGE ?= localhost/igdeadlock:latest
VENV ?= .venv
PYTHON ?= python3
BUILD := build
IG ?= /usr/local/bin/ig
IG_VERSION := $(shell awk '$$1 == "github.com/inspektor-gadget/inspektor-gadget" { print $$2; exit }' tools/ig/go.mod)
GADGET_SOURCES := program.bpf.c $(sort $(wildcard bpf/*.h)) gadget.yaml build.yaml
PYTEST_ARGS ?=

.PHONY: help setup setup-packages setup-ig setup-python setup-test-tools gadget test load-test kernels setup-kernels test-kernels test-k8s-kernel unit-test e2e-test test-k8s demo bench soak setup-bench diagrams containers cluster cluster-down lint proto clean

help:
	@sed -n '2,20p' Makefile | sed 's/^# \{0,1\}//'

setup: setup-packages setup-ig setup-python setup-test-tools

setup-packages:
	@tools/setup-packages.sh build test
	@# ig's local build runs exactly `clang` and `llvm-strip`
	@command -v clang >/dev/null || ln -sf "$$(command -v clang-19)" /usr/local/bin/clang
	@command -v llvm-strip >/dev/null || ln -sf "$$(command -v llvm-strip-19)" /usr/local/bin/llvm-strip

setup-ig:
	@PREFIX=/usr/local tools/ig/build-ig.sh

setup-python: $(VENV)/.installed

$(VENV)/.installed: python/pyproject.toml
	@$(PYTHON) -c 'import venv, ensurepip' 2>/dev/null || { \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3-venv; }
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e 'python[test]'
	@touch $@

# For the tests only: Microsoft's SARIF validator (npm) and a headless browser (Debian).
SARIF_MULTITOOL := $(BUILD)/tools/node_modules/@microsoft/sarif-multitool-linux/Sarif.Multitool
setup-test-tools: $(SARIF_MULTITOOL)

$(SARIF_MULTITOOL):
	mkdir -p $(BUILD)/tools
	npm install --prefix $(BUILD)/tools --no-audit --no-fund --silent @microsoft/sarif-multitool@5.7.0
	chmod +x $@

# The image is rebuilt when its sources or the ig version change, or when the
# tag no longer names the image built here (another checkout on this machine
# may have built the same tag since): the stamp keeps the digest it was given.
IMAGE_DIGEST = $(IG) image list 2>/dev/null | awk -v repo="$(firstword $(subst :, ,$(IMAGE)))" \
	-v tag="$(lastword $(subst :, ,$(IMAGE)))" '$$1 == repo && $$2 == tag { print $$3 }'
gadget: setup-ig
	@mkdir -p $(BUILD)
	@sources="$$(cat $(GADGET_SOURCES) | sha256sum | cut -c1-16)-$(IG_VERSION)-$(IMAGE)"; \
	digest="$$($(IMAGE_DIGEST))"; \
	if [ -n "$$digest" ] && [ "$$(cat $(BUILD)/gadget.stamp 2>/dev/null)" = "$$sources $$digest" ]; then \
		echo "gadget: $(IMAGE) is up to date"; \
	else \
		$(IG) image build --local -t $(IMAGE) . && \
		echo "$$sources $$($(IMAGE_DIGEST))" > $(BUILD)/gadget.stamp; \
	fi

test: setup gadget
	$(VENV)/bin/pytest -q tests --ignore=tests/k8s --ignore=tests/kernels $(PYTEST_ARGS)

# Seconds, not minutes: a gadget the verifier rejects fails here first (CI runs it
# before anything long). Prints the verifier's figures per program.
load-test: setup-packages setup-python gadget
	$(VENV)/bin/pytest -q tests/e2e/test_verifier.py $(PYTEST_ARGS)

# The kernel matrix: Debian's kernels (cached under $IGDEADLOCK_CACHE/kernels), each
# booted in a guest that sees this machine's files; tools/kernels/kvm.py.
KERNELS ?=
setup-kernels:
	@tools/setup-packages.sh kernels

kernels: setup-kernels
	@tools/kernels/kvm.py fetch $(KERNELS)

test-kernels: setup kernels gadget
	KERNELS="$(KERNELS)" $(VENV)/bin/pytest -q tests/kernels $(PYTEST_ARGS)

# `kubectl gadget run` where ig attaches the uprobes itself: a single-node cluster
# (tools/cluster) in a guest of a kernel with kprobes, and tests/k8s's kubectl
# gadget tests against it. Not in make test: on an emulated CPU it takes tens of
# minutes. The cluster's binaries are built here first (cached); its logs land in
# build/kernels/k8s-$(K8S_KERNEL).
K8S_KERNEL ?= 6.1
test-k8s-kernel: setup setup-kernels gadget containers
	@tools/setup-packages.sh cluster
	@tools/cluster/build.sh >/dev/null
	@tools/cluster/ig/build.sh >/dev/null
	tools/kernels/kvm.py fetch $(K8S_KERNEL)
	tools/kernels/kvm.py run $(K8S_KERNEL) --modules -m 6144 -t 5400 --out $(BUILD)/kernels/k8s-$(K8S_KERNEL) \
		-- tools/kernels/k8s-guest.sh

unit-test: setup-python
	$(VENV)/bin/pytest -q tests/unit $(PYTEST_ARGS)

e2e-test: setup gadget
	$(VENV)/bin/pytest -q tests/e2e $(PYTEST_ARGS)

# Against the real cluster of `make cluster` (left running): the gadget image
# pushed to its registry, `kubectl gadget run`, `igdeadlock watch --k8s`.
test-k8s: setup-python cluster gadget
	$(VENV)/bin/pytest -q tests/k8s $(PYTEST_ARGS)

demo: setup gadget
	@mkdir -p $(BUILD)/examples
	gcc -g -O0 -fno-omit-frame-pointer -pthread -o $(BUILD)/examples/lock_inversion examples/lock_inversion.c
	$(VENV)/bin/igdeadlock trace -- $(BUILD)/examples/lock_inversion

# the servers the benchmark loads (MariaDB, sysbench; memcached comes with the test group)
setup-bench: setup
	@tools/setup-packages.sh bench

bench: setup-bench gadget
	cd bench && ../$(VENV)/bin/python bench.py --json ../$(BUILD)/bench/results.json

# igdeadlock watch for SOAK_MINUTES (default 30) beside loaded servers and a
# process churn, its daemon killed once (bench/soak.py); not part of make test
SOAK_MINUTES ?= 30
soak: setup-bench gadget
	cd bench && SOAK_MINUTES=$(SOAK_MINUTES) ../$(VENV)/bin/python soak.py

# A Docker engine (started when it does not answer) and the images the tests run
# programs in; both steps are idempotent and cached (tools/containers/).
containers:
	@tools/containers/docker.sh start
	@tools/containers/build-images.sh

# Kubernetes 1.34 (built from Go modules, cached), containerd, a local registry,
# and IG deployed with `kubectl gadget deploy`; idempotent (tools/cluster/cluster.sh).
cluster: setup-packages setup-ig
	@tools/cluster/cluster.sh ig

cluster-down:
	@tools/cluster/cluster.sh down

# DEVELOPER.md's diagrams come from the built image, never from hand edits.
diagrams: gadget
	tools/gen-developer-md.sh $(IG) $(IMAGE) > DEVELOPER.md.new && mv DEVELOPER.md.new DEVELOPER.md

# C in Inspektor Gadget's style: its .clang-format, from the same module version as ig.
C_SOURCES := program.bpf.c $(wildcard bpf/*.h bench/*.c tests/programs/*.c tests/programs/*.cc tests/programs/*.h examples/*.c)
lint: setup-packages setup-python
	cd python && ../$(VENV)/bin/ruff check igdeadlock ../tests ../bench ../tools
	cd python && ../$(VENV)/bin/mypy
	@ig_source=$$(cd tools/ig && go mod download -json github.com/inspektor-gadget/inspektor-gadget@$(IG_VERSION) | \
		sed -n 's/^\t"Dir": "\(.*\)",$$/\1/p'); \
	[ -f "$$ig_source/.clang-format" ] || { echo "lint: no .clang-format in $$ig_source" >&2; exit 1; }; \
	clang-format-19 --style=file:$$ig_source/.clang-format --dry-run --Werror $(C_SOURCES)

proto:
	$(VENV)/bin/pip install -q 'grpcio-tools==1.85.1'
	cd python && ../$(VENV)/bin/python -m grpc_tools.protoc -I . --python_out=. --pyi_out=. --grpc_python_out=. \
		igdeadlock/ig/proto/api.proto

clean:
	rm -rf $(BUILD) tests/.bin
