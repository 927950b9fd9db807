package vm

import (
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/magnetar-io/magnetar/internal/testutil"
	"github.com/magnetar-io/magnetar/sdk/backend"
)

// TestHostRootBind: the file service's view of a container's root is a
// bind mount under the sandbox's own directory, made through a handle on
// the shared directory; what the guest does to the shared directory
// afterwards (the container's directory renamed, a link to the host's
// root in its place) does not change it; a restarted sandboxer finds it
// again, a directory without a mount is not taken for it, and removing it
// leaves no mount.
func TestHostRootBind(t *testing.T) {
	testutil.RequireRoot(t, "mounts")
	dir := t.TempDir()
	s := &sandbox{cfg: backend.SandboxConfig{ID: "sb", Dir: dir}, shared: filepath.Join(dir, "shared")}
	src := filepath.Join(dir, "src")
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.MkdirAll(src, 0o755))
	must(os.WriteFile(filepath.Join(src, "hello"), []byte("inside\n"), 0o644))
	cdir := filepath.Join(s.shared, "c1")
	must(os.MkdirAll(filepath.Join(cdir, "rootfs"), 0o711))
	must(unix.Mount(src, filepath.Join(cdir, "rootfs"), "", unix.MS_BIND, ""))
	t.Cleanup(func() {
		_ = unmountUnder(s.shared)
		_ = unmountUnder(filepath.Join(dir, rootsDir))
	})
	root, err := openRootNoFollow(cdir)
	must(err)
	p, err := s.bindHostRoot("c1", root)
	root.Close()
	must(err)
	if p != filepath.Join(dir, rootsDir, "c1") {
		t.Errorf("host root = %s", p)
	}
	// The guest renames the container's directory and plants a link to
	// the host's root in its place.
	must(os.Rename(cdir, filepath.Join(s.shared, "moved")))
	must(os.Symlink("/", cdir))
	if b, err := os.ReadFile(filepath.Join(p, "hello")); err != nil || string(b) != "inside\n" {
		t.Errorf("read through the host root = %q, %v", b, err)
	}
	if got := s.recoveredHostRoot("c1"); got != p {
		t.Errorf("recovered host root = %q, want %q", got, p)
	}
	must(os.MkdirAll(s.hostRootPath("c2"), 0o700))
	if got := s.recoveredHostRoot("c2"); got != "" {
		t.Errorf("a directory without a mount recovered as a host root: %q", got)
	}
	must(s.removeHostRoot("c1"))
	if _, err := os.Stat(p); !os.IsNotExist(err) {
		t.Errorf("host root left after removal: %v", err)
	}
	if b, err := os.ReadFile(filepath.Join(src, "hello")); err != nil || string(b) != "inside\n" {
		t.Errorf("the source after removal = %q, %v", b, err)
	}
}
