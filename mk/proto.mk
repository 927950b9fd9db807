# Protobuf: Buf lint/format/generate for proto/ -> gen/ (see docs/api.md).
#
# Buf comes from npm (@bufbuild/buf, pinned in package.json / package-lock.json;
# a prebuilt binary, no compile). The protoc plugins are pinned as go.mod tool
# directives and run by buf.gen.yaml through `go tool`.

BUF          := $(ROOT)/node_modules/.bin/buf
# The client makefiles (mk/client-*.mk, included before this one) add their
# generated directories, generate targets and test targets.
PROTO_DIRS   := proto gen third_party $(CLIENT_GEN_DIRS)
BUF_AGAINST  ?= .git\#branch=main,subdir=proto

# npm ci only when the lock file changed (npm keeps the tarballs' old mtimes,
# hence the touch).
$(BUF): $(ROOT)/package.json $(ROOT)/package-lock.json
	@command -v npm >/dev/null || { echo "npm is required to install buf (Node.js >= 18)" >&2; exit 1; }
	cd $(ROOT) && npm ci --no-audit --no-fund --loglevel=error
	@touch $@

.PHONY: buf
buf: $(BUF) ## Install the pinned Buf CLI into node_modules/
	@$(BUF) --version

.PHONY: vendor-protos
vendor-protos: ## Copy containerd's .proto files (go.mod version) into third_party/
	$(ROOT)/hack/vendor-protos.sh

.PHONY: generate generate-go
generate: generate-go $(CLIENT_GENERATE) ## Regenerate gen/ and the clients' generated code from proto/ with Buf

generate-go: $(BUF) vendor-protos ## Regenerate gen/ (Go, Connect, ttrpc) from proto/ with Buf
	cd $(ROOT) && $(BUF) format -w proto
	cd $(ROOT) && $(BUF) generate

.PHONY: lint-proto
lint-proto: $(BUF) ## Lint and format-check the protobuf files
	cd $(ROOT) && $(BUF) lint
	cd $(ROOT) && $(BUF) format proto --diff --exit-code

.PHONY: breaking-proto
breaking-proto: $(BUF) ## Check proto/ for breaking changes against BUF_AGAINST (default: main)
	cd $(ROOT) && $(BUF) breaking proto --against '$(BUF_AGAINST)'

.PHONY: check-generate
check-generate: generate ## Fail if `make generate` changes proto/, gen/, third_party/ or the clients' generated code
	@cd $(ROOT) && changes="$$(git status --porcelain --untracked-files=all -- $(PROTO_DIRS))"; \
	if [[ -n "$$changes" ]]; then \
		echo "generated files are out of date; run 'make generate' and commit:" >&2; \
		echo "$$changes" >&2; \
		git --no-pager diff -- $(PROTO_DIRS) >&2; \
		exit 1; \
	fi
