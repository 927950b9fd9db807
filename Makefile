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
GO     ?= go
export PATH := $(BIN):$(PATH)

.PHONY: help
help: ## Show this help
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z0-9_.-]+:.*## / {printf "  \033[36m%-18s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

include $(sort $(wildcard $(ROOT)/mk/*.mk))
