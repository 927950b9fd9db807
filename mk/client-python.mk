# Python client (clients/python): generation, venv and tests (issue 5).
#
# Tools and libraries are pinned in clients/python/requirements-*.txt and
# installed into clients/python/.venv (reinstalled when those files change).
# buf.gen.python.yaml generates the public API into clients/python/src/magnetar
# next to the hand-written layer; protoc comes from grpcio-tools.

PY_DIR        := $(ROOT)/clients/python
PY_VENV       := $(PY_DIR)/.venv
PY_GEN_DIRS   := clients/python/src/magnetar/sandbox clients/python/src/magnetar/container \
                 clients/python/src/magnetar/image clients/python/src/magnetar/types \
                 clients/python/src/magnetar/file
PYTHON3       ?= python3
CLIENT_GEN_DIRS += $(PY_GEN_DIRS)
CLIENT_GENERATE += generate-python
CLIENT_TESTS    += test-python

$(PY_VENV)/.stamp: $(PY_DIR)/requirements-gen.txt $(PY_DIR)/requirements-dev.txt
	@command -v $(PYTHON3) >/dev/null || { echo "$(PYTHON3) (>= 3.11) is required" >&2; exit 1; }
	rm -rf $(PY_VENV)
	$(PYTHON3) -m venv $(PY_VENV) || { echo "$(PYTHON3) -m venv failed (on Debian's python3: apt-get install python3-venv)" >&2; exit 1; }
	$(PY_VENV)/bin/pip install --quiet --disable-pip-version-check \
		-r $(PY_DIR)/requirements-gen.txt -r $(PY_DIR)/requirements-dev.txt
	@touch $@

.PHONY: venv-python
venv-python: $(PY_VENV)/.stamp ## Install the Python client's pinned tools and deps into clients/python/.venv

# The prerequisite spells out $(BUF): this file is read before mk/proto.mk
# defines it (prerequisites expand at read time, recipes later).
.PHONY: generate-python
generate-python: $(ROOT)/node_modules/.bin/buf $(PY_VENV)/.stamp ## Regenerate the Python client's stubs (clients/python/src/magnetar/*/v1)
	cd $(ROOT) && rm -rf $(PY_GEN_DIRS)
	cd $(ROOT) && $(BUF) generate --template buf.gen.python.yaml

.PHONY: test-python
test-python: build examples $(PY_VENV)/.stamp ## Type-check the Python client and run its tests against a live sandboxer (root)
	cd $(PY_DIR) && $(PY_VENV)/bin/mypy
	cd $(PY_DIR) && MAGNETAR_BIN=$(BIN) MAGNETAR_EXAMPLES=$(EXAMPLES_DIR) \
		$(TIDY_CGROUPS) $(PY_VENV)/bin/python -m pytest -v -p no:cacheprovider
