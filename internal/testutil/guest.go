package testutil

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/magnetar-io/magnetar/internal/testutil/prereq"
)

// SkipOrFail skips the test with the message, or fails it when
// MAGNETAR_E2E_REQUIRED=1 (CI), so that missing prerequisites cannot
// silently skip what must run. Every skip for a missing prerequisite (root,
// runc, overlay, QEMU, the guest image, ...) goes through it or [Require].
func SkipOrFail(t testing.TB, format string, args ...any) {
	t.Helper()
	prereq.SkipOrFail(t, format, args...)
}

// Require skips the test (see [SkipOrFail]) unless ok; what names the
// missing prerequisite ("needs root (mounts)", "no runsc in PATH", ...).
func Require(t testing.TB, ok bool, format string, args ...any) {
	t.Helper()
	if !ok {
		SkipOrFail(t, format, args...)
	}
}

// RequireRoot skips the test (see [SkipOrFail]) unless it runs as root;
// why says what root is needed for.
func RequireRoot(t testing.TB, why string) {
	t.Helper()
	Require(t, os.Geteuid() == 0, "needs root (%s)", why)
}

// GuestImage returns the microVM guest image (kernel and initramfs of
// "make guest": $MAGNETAR_GUEST_DIR, default <repository>/.tmp/guest) for a
// test that boots VMs under QEMU; it skips (see SkipOrFail) in -short mode
// or when QEMU or the image is missing.
func GuestImage(t testing.TB) (kernel, initrd string) {
	t.Helper()
	if testing.Short() {
		t.Skip("boots VMs: not in -short")
	}
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		SkipOrFail(t, "no qemu-system-x86_64 in PATH: apt-get install qemu-system-x86")
	}
	dir := os.Getenv("MAGNETAR_GUEST_DIR")
	if dir == "" {
		root, err := repoRoot()
		if err != nil {
			SkipOrFail(t, "cannot find the repository root: %v", err)
		}
		dir = filepath.Join(root, ".tmp", "guest")
	}
	kernel, initrd = filepath.Join(dir, "vmlinux"), filepath.Join(dir, "initramfs.cpio.gz")
	for _, p := range []string{kernel, initrd} {
		if _, err := os.Stat(p); err != nil {
			SkipOrFail(t, "guest image missing (%v): run make guest", err)
		}
	}
	return kernel, initrd
}

// repoRoot is the nearest directory above the working directory with a
// go.mod.
func repoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("no go.mod above the working directory")
		}
		dir = parent
	}
}
