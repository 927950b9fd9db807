# Test and demo environment: Debian packages, the pinned containerd/CRI tools
# and the registry-free test images. Included by the root Makefile (ROOT,
# TMP, BIN, GO).

IMAGES      := $(TMP)/images
MKIMAGE_SRC := $(ROOT)/hack/cmd/mkimage/main.go $(filter-out %_test.go,$(wildcard $(ROOT)/internal/ociimage/*.go))
PAUSE_SRC   := $(ROOT)/internal/harness/pause/main.go

.PHONY: deps tools images

deps: ## Install Debian packages the tests and demos need
	@$(ROOT)/hack/install-deps.sh

tools: ## Build containerd, ctr, crictl, critest pinned in go.mod into .tmp/bin
	@GO="$(GO)" BIN="$(BIN)" $(ROOT)/hack/build-tools.sh

images: $(IMAGES)/busybox.tar $(IMAGES)/pause.tar ## Build test images (busybox, pause) into .tmp/images

$(BIN)/mkimage: $(MKIMAGE_SRC)
	$(GO) build -C $(ROOT) -o $@ ./hack/cmd/mkimage

$(IMAGES)/busybox.tar: $(BIN)/mkimage /bin/busybox
	@mkdir -p $(@D)
	$(BIN)/mkimage busybox -name docker.io/library/busybox:1.36 -o $@

$(IMAGES)/pause.tar: $(BIN)/mkimage $(PAUSE_SRC)
	@rm -rf $(IMAGES)/pause-rootfs && mkdir -p $(IMAGES)/pause-rootfs
	CGO_ENABLED=0 $(GO) build -C $(ROOT) -trimpath -ldflags='-s -w' -o $(IMAGES)/pause-rootfs/pause ./internal/harness/pause
	$(BIN)/mkimage dir -name registry.k8s.io/pause:3.10.2 -entrypoint /pause -user 65535:65535 $(IMAGES)/pause-rootfs -o $@
	@rm -rf $(IMAGES)/pause-rootfs
