# Example workloads, built by the project's own tooling (no registry, no
# container engine): Go programs compiled to WASI and packaged as OCI images.

EXAMPLES_DIR := $(TMP)/examples
HELLO_WASM_IMAGE := docker.io/magnetar/hello-wasm:latest

$(EXAMPLES_DIR)/hello-wasm/rootfs/hello.wasm: $(wildcard $(ROOT)/examples/hello-wasm/*.go)
	@mkdir -p $(dir $@)
	cd $(ROOT) && GOOS=wasip1 GOARCH=wasm $(GO) build -trimpath -o $@ ./examples/hello-wasm

$(EXAMPLES_DIR)/hello-wasm.oci.tar: $(EXAMPLES_DIR)/hello-wasm/rootfs/hello.wasm
	cd $(ROOT) && $(GO) run ./hack/cmd/mkimage dir -name $(HELLO_WASM_IMAGE) -entrypoint /hello.wasm \
		$(EXAMPLES_DIR)/hello-wasm/rootfs -o $@

.PHONY: examples
examples: $(EXAMPLES_DIR)/hello-wasm.oci.tar ## Build the example images (hello-wasm as an OCI archive)

$(EXAMPLES_DIR)/busybox.oci.tar:
	@mkdir -p $(dir $@)
	cd $(ROOT) && $(GO) run ./hack/cmd/mkimage busybox -name docker.io/library/busybox:1.36 -o $@

examples: $(EXAMPLES_DIR)/busybox.oci.tar
