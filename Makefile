# Magnetar — multi-sandbox container runtime.
# Run `make help` for the list of targets. Everything a target needs is
# installed by the target itself (see hack/install-deps.sh).

SHELL := /usr/bin/env bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help
MAKEFLAGS += --no-print-directory

ROOT   := $(abspath $(dir $(lastword $(MAKEFILE_LIST))))
TMP    := $(ROOT)/.tmp
BIN    := $(TMP)/bin
# Wraps test commands: removes the default cgroup parent they made.
TIDY_CGROUPS := $(ROOT)/hack/tidy-cgroups.sh
GO     ?= go
export PATH := $(BIN):$(PATH)

.PHONY: help
help: ## Show this help
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z0-9_.-]+:.*## / {printf "  \033[36m%-18s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

include $(sort $(wildcard $(ROOT)/mk/*.mk))

BINARIES := magnetar-sandboxer containerd-shim-magnetar-v2
GOTEST_FLAGS ?=

.PHONY: build
build: ## Build Magnetar's binaries into .tmp/bin
	@mkdir -p $(BIN)
	CGO_ENABLED=0 $(GO) build -trimpath -o $(BIN)/magnetar-sandboxer ./sandboxer/cmd/magnetar-sandboxer
	CGO_ENABLED=0 $(GO) build -trimpath -o $(BIN)/containerd-shim-magnetar-v2 ./sandboxer/cmd/containerd-shim-magnetar-v2
	CGO_ENABLED=0 $(GO) build -trimpath -o $(BIN)/magnetar ./sdk/cmd/magnetar

# The client, the CLI and the magnetar program are portable (docs/design.md,
# test/layering): they are compiled for macOS on every test run.
CROSS_PKGS := ./sdk ./sdk/cli ./sdk/cmd/magnetar

.PHONY: cross-build
cross-build: ## Compile the Go client, the CLI and the magnetar program for macOS (arm64, amd64)
	@for arch in arm64 amd64; do \
		echo "GOOS=darwin GOARCH=$$arch go build $(CROSS_PKGS)"; \
		GOOS=darwin GOARCH=$$arch CGO_ENABLED=0 $(GO) build -o /dev/null $(CROSS_PKGS) || exit 1; \
	done

.PHONY: deps-client
deps-client: ## Print how many packages a program using only the Go client links (kept small: test/layering)
	@for p in ./sdk ./sdk/cmd/magnetar ./sdk/embedded ./taskagent/cmd/magnetar-agent ./sandboxer/cmd/magnetar-sandboxer; do \
		printf '%-36s %4s non-standard packages (%s in all)\n' "$$p" \
			"$$($(GO) list -deps -f '{{if not .Standard}}{{.ImportPath}}{{end}}' $$p | grep -c .)" \
			"$$($(GO) list -deps $$p | grep -c .)"; \
	done

.PHONY: vet
vet: ## Run go vet and check formatting
	$(GO) vet ./...
	@out="$$(gofmt -l $$(git ls-files '*.go' | grep -v '^gen/'))"; if [[ -n "$$out" ]]; then echo "gofmt needed:" >&2; echo "$$out" >&2; exit 1; fi

.PHONY: lint
lint: vet lint-proto ## Lint Go and protobuf

.PHONY: test-unit
test-unit: ## Run unit and component tests with -race (root-only tests skip without root)
	$(TIDY_CGROUPS) $(GO) test -race -count=1 $(GOTEST_FLAGS) $$($(GO) list ./... | grep -v -e /test/e2e -e /test/critest)
	cd $(ROOT)/bench && $(GO) vet ./... && $(TIDY_CGROUPS) $(GO) test -race -count=1 $(GOTEST_FLAGS) ./...

.PHONY: test-e2e
test-e2e: deps tools build guest ## Run end-to-end tests through a private containerd (root)
	MAGNETAR_BIN=$(BIN) MAGNETAR_E2E_REQUIRED=1 $(TIDY_CGROUPS) $(GO) test -count=1 -timeout 20m -v $(GOTEST_FLAGS) ./test/e2e/...

.PHONY: test-critest
test-critest: deps tools build guest ## Run cri-tools' critest against stock runc and every Magnetar handler (root; test/critest/expectations.toml)
	MAGNETAR_BIN=$(BIN) MAGNETAR_E2E_REQUIRED=1 $(TIDY_CGROUPS) $(GO) test -count=1 -timeout 30m -v $(GOTEST_FLAGS) ./test/critest/

.PHONY: test-critest-full
test-critest-full: deps tools build guest ## critest with no focused subset: every spec for every handler (magnetar-vm's whole set under QEMU TCG is long; not part of `make test`)
	MAGNETAR_CRITEST_FULL=1 MAGNETAR_BIN=$(BIN) MAGNETAR_E2E_REQUIRED=1 $(TIDY_CGROUPS) $(GO) test -count=1 -timeout 120m -v $(GOTEST_FLAGS) ./test/critest/

.PHONY: test-vm
test-vm: deps guest ## Boot the microVM guest under QEMU and talk to its agent (root)
	MAGNETAR_E2E_REQUIRED=1 $(TIDY_CGROUPS) $(GO) test -count=1 -timeout 10m $(GOTEST_FLAGS) ./sdk/kinds/vm/...

.PHONY: test
test: deps tools build cross-build deps-client check-generate lint test-unit test-e2e test-critest test-vm test-clients bench-short ## Run every test (installs what it needs; needs root)

.PHONY: test-clients
test-clients: $(CLIENT_TESTS) ## Test the generated clients (TypeScript, Python, Java) against a live sandboxer (root)

.PHONY: bench
bench: deps tools build examples guest ## Run the Go benchmarks and the comparative benchmark; writes bench/report.md and plots (root)
	@mkdir -p $(TMP)/bench
	MAGNETAR_BIN=$(BIN) $(GO) test -run '^$$' -bench . -benchmem ./... | tee $(TMP)/bench/gobench.txt
	cd $(ROOT)/bench && $(GO) run . -bin $(BIN) -out $(ROOT)/bench -gobench $(TMP)/bench/gobench.txt

.PHONY: bench-short
bench-short: deps tools build examples guest ## Quick comparative benchmark (few iterations; never fails on a timing); writes .tmp/bench-short/ (root)
	@mkdir -p $(TMP)/bench-short
	cd $(ROOT)/bench && $(TIDY_CGROUPS) $(GO) run . -short -bin $(BIN) -out $(TMP)/bench-short

.PHONY: demo
demo: deps build examples ## Run the main demo: Wasm and runc containers in direct mode (no containerd)
	BIN=$(BIN) EXAMPLES=$(EXAMPLES_DIR) $(ROOT)/hack/demo.sh

.PHONY: demo-vm
demo-vm: deps build examples guest ## Run the main demo plus busybox in a microVM, with its boot timings
	BIN=$(BIN) EXAMPLES=$(EXAMPLES_DIR) VM=1 $(ROOT)/hack/demo.sh

.PHONY: demo-agent-loop
demo-agent-loop: deps build examples guest ## Run examples/agent-loop in every kind (runc, gvisor, vm, wasm) against a private sandboxer
	BIN=$(BIN) EXAMPLES=$(EXAMPLES_DIR) GUEST=$(GUEST_DIR) $(ROOT)/hack/demo-agent-loop.sh

.PHONY: demo-containerd
demo-containerd: deps tools build ## Run a busybox pod through a private containerd with handler magnetar-runc
	BIN=$(BIN) $(ROOT)/hack/demo-containerd.sh

.PHONY: clean
clean: ## Remove build outputs
	rm -rf $(TMP)
