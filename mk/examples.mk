# Example workloads, built by the project's own tooling (no registry, no
# container engine): a Go program compiled to WASI and a module written in
# the WebAssembly text format (assembled by wabt's wat2wasm), packaged as
# OCI images.

EXAMPLES_DIR := $(TMP)/examples
HELLO_WASM_IMAGE := docker.io/magnetar/hello-wasm:latest

$(EXAMPLES_DIR)/hello-wasm/rootfs/hello.wasm: $(wildcard $(ROOT)/examples/hello-wasm/*.go)
	@mkdir -p $(dir $@)
	cd $(ROOT) && GOOS=wasip1 GOARCH=wasm $(GO) build -trimpath -o $@ ./examples/hello-wasm

$(EXAMPLES_DIR)/hello-wasm.oci.tar: $(EXAMPLES_DIR)/hello-wasm/rootfs/hello.wasm
	cd $(ROOT) && $(GO) run ./hack/cmd/mkimage dir -name $(HELLO_WASM_IMAGE) -entrypoint /hello.wasm \
		$(EXAMPLES_DIR)/hello-wasm/rootfs -o $@

HELLO_WAT_IMAGE := docker.io/magnetar/hello-wat:latest

$(EXAMPLES_DIR)/hello-wat/rootfs/hello.wasm: $(ROOT)/examples/hello-wat/hello.wat
	@mkdir -p $(dir $@)
	wat2wasm $< -o $@

$(EXAMPLES_DIR)/hello-wat.oci.tar: $(EXAMPLES_DIR)/hello-wat/rootfs/hello.wasm
	cd $(ROOT) && $(GO) run ./hack/cmd/mkimage dir -name $(HELLO_WAT_IMAGE) -entrypoint /hello.wasm \
		$(EXAMPLES_DIR)/hello-wat/rootfs -o $@

.PHONY: examples
examples: $(EXAMPLES_DIR)/hello-wasm.oci.tar $(EXAMPLES_DIR)/hello-wat.oci.tar ## Build the example images (hello-wasm, hello-wat as OCI archives)

$(EXAMPLES_DIR)/busybox.oci.tar:
	@mkdir -p $(dir $@)
	cd $(ROOT) && $(GO) run ./hack/cmd/mkimage busybox -name docker.io/library/busybox:1.36 -o $@

examples: $(EXAMPLES_DIR)/busybox.oci.tar

# The agent-loop program (examples/agent-loop): a code-execution platform's
# round trip through the Go SDK against a running sandboxer.
.PHONY: $(EXAMPLES_DIR)/agent-loop
$(EXAMPLES_DIR)/agent-loop:
	@mkdir -p $(dir $@)
	cd $(ROOT) && $(GO) build -trimpath -o $@ ./examples/agent-loop

examples: $(EXAMPLES_DIR)/agent-loop
