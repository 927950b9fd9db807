# The microVM guest: Debian kernel (uncompressed PVH vmlinux) and an
# initramfs with magnetar-agent as /init. hack/build-guest.sh keys a stamp
# on every input (kernel package version, runc, agent sources, Go version)
# and does nothing when it matches, so depending on `guest` is cheap.

GUEST_DIR := $(TMP)/guest
GUEST_KERNEL := $(GUEST_DIR)/vmlinux
GUEST_INITRAMFS := $(GUEST_DIR)/initramfs.cpio.gz

.PHONY: guest
guest: ## Build the microVM guest: Debian kernel + initramfs with magnetar-agent as /init
	GO=$(GO) $(ROOT)/hack/build-guest.sh $(GUEST_DIR)

.PHONY: guest-clean
guest-clean: ## Remove the microVM guest (keeps the downloaded kernel package)
	rm -rf $(GUEST_DIR)/vmlinux $(GUEST_DIR)/initramfs.cpio.gz $(GUEST_DIR)/stamp $(GUEST_DIR)/kernel-version $(GUEST_DIR)/stage
