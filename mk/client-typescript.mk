# TypeScript client (clients/typescript, npm package @magnetar-io/client):
# generation from proto/ with Buf and protoc-gen-es, and its tests against a
# live magnetar-sandboxer. Its npm dependencies (the Connect-ES runtime,
# protoc-gen-es, TypeScript) are pinned in clients/typescript/package-lock.json.

TS_CLIENT_DIR := $(ROOT)/clients/typescript
# npm ci writes this file; it tracks the lock file (npm keeps the tarballs'
# old mtimes, hence the touch).
TS_CLIENT_DEPS := $(TS_CLIENT_DIR)/node_modules/.package-lock.json

CLIENT_GEN_DIRS += clients/typescript/src/gen
CLIENT_GENERATE += generate-typescript
CLIENT_TESTS    += test-typescript

$(TS_CLIENT_DEPS): $(TS_CLIENT_DIR)/package.json $(TS_CLIENT_DIR)/package-lock.json
	@command -v npm >/dev/null || { echo "npm is required for the TypeScript client (Node.js >= 20)" >&2; exit 1; }
	cd $(TS_CLIENT_DIR) && npm ci --no-audit --no-fund --loglevel=error
	@touch $@

.PHONY: deps-typescript
deps-typescript: $(TS_CLIENT_DEPS) ## Install the TypeScript client's pinned npm dependencies

# Buf's path is spelled out: proto.mk (which defines BUF) is included after
# this file, and prerequisites are expanded when read.
.PHONY: generate-typescript
generate-typescript: $(ROOT)/node_modules/.bin/buf $(TS_CLIENT_DEPS) ## Regenerate clients/typescript/src/gen from proto/
	cd $(ROOT) && $(BUF) generate --template buf.gen.typescript.yaml

.PHONY: build-typescript
build-typescript: $(TS_CLIENT_DEPS) ## Compile the TypeScript client (tsc) into clients/typescript/dist
	cd $(TS_CLIENT_DIR) && npm run --silent build

.PHONY: test-typescript
test-typescript: build examples build-typescript ## Test the TypeScript client against a live magnetar-sandboxer (root)
	cd $(TS_CLIENT_DIR) && MAGNETAR_BIN=$(BIN) MAGNETAR_EXAMPLES=$(EXAMPLES_DIR) MAGNETAR_E2E_REQUIRED=1 $(TIDY_CGROUPS) npm test
