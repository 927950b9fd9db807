package vm

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	"github.com/magnetar-io/magnetar/internal/testutil"
	"github.com/magnetar-io/magnetar/sdk/backend"
)

// TestPrepareShares checks what a container's shared directory holds on
// the host: the rootfs and bind sources mounted, "ro" binds read-only on
// the host too, and links planted in the directory (by a guest, which can
// write to the share) never lead a mount or a write outside it.
func TestPrepareShares(t *testing.T) {
	testutil.RequireRoot(t, "mounts")
	base := t.TempDir()
	s := newSandbox(nil, backend.SandboxConfig{ID: "p", Dir: filepath.Join(base, "sb")})
	defer s.cancel()
	if err := os.MkdirAll(s.shared, 0o711); err != nil {
		t.Fatal(err)
	}
	rootfs, roSrc, rwSrc := filepath.Join(base, "rootfs"), filepath.Join(base, "ro"), filepath.Join(base, "rw")
	for _, d := range []string{rootfs, roSrc, rwSrc} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	spec := &specs.Spec{Root: &specs.Root{Path: rootfs}, Mounts: []specs.Mount{
		{Destination: "/ro", Type: "bind", Source: roSrc, Options: []string{"rbind", "ro"}},
		{Destination: "/rw", Type: "bind", Source: rwSrc, Options: []string{"rbind", "rw"}},
		{Destination: "/proc", Type: "proc", Source: "proc"},
	}}

	dir := filepath.Join(s.shared, "c1")
	if err := os.Mkdir(dir, 0o711); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = unmountUnder(s.shared) })
	root, err := openRootNoFollow(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer root.Close()
	got, err := s.prepare(backend.ContainerConfig{ID: "c1", Spec: spec}, dir, root)
	if err != nil {
		t.Fatal(err)
	}
	if got.Mounts[0].Source != guestShared+"/c1/mounts/0" || got.Mounts[1].Source != guestShared+"/c1/mounts/1" || got.Mounts[2].Source != "proc" {
		t.Errorf("rewritten mounts: %+v", got.Mounts)
	}
	if err := os.WriteFile(filepath.Join(dir, "mounts/1/f"), []byte("x"), 0o644); err != nil {
		t.Errorf("rw bind not writable: %v", err)
	}
	if _, err := os.Stat(filepath.Join(rwSrc, "f")); err != nil {
		t.Errorf("write through the rw bind did not reach its source: %v", err)
	}
	if err := os.WriteFile(filepath.Join(dir, "mounts/0/f"), []byte("x"), 0o644); !errors.Is(err, syscall.EROFS) {
		t.Errorf("write to the ro bind on the host: %v, want EROFS", err)
	}
	if err := os.WriteFile(filepath.Join(dir, "rootfs/marker"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(rootfs, "marker")); err != nil {
		t.Errorf("rootfs not bound: %v", err)
	}

	// A guest plants "mounts" as a link to a host directory before the
	// host prepares the next container's binds.
	outside := filepath.Join(base, "outside")
	if err := os.Mkdir(outside, 0o755); err != nil {
		t.Fatal(err)
	}
	dir2 := filepath.Join(s.shared, "c2")
	if err := os.Mkdir(dir2, 0o711); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(outside, filepath.Join(dir2, "mounts")); err != nil {
		t.Fatal(err)
	}
	root2, err := openRootNoFollow(dir2)
	if err != nil {
		t.Fatal(err)
	}
	defer root2.Close()
	spec2 := &specs.Spec{Root: &specs.Root{Path: rootfs}, Mounts: spec.Mounts[:1]}
	if _, err := s.prepare(backend.ContainerConfig{ID: "c2", Spec: spec2}, dir2, root2); err == nil {
		t.Error("prepare followed a link out of the container's directory")
	}
	if ents, _ := os.ReadDir(outside); len(ents) != 0 {
		t.Errorf("created outside the share: %v", ents)
	}
	mi, _ := os.ReadFile("/proc/self/mountinfo")
	if strings.Contains(string(mi), outside) {
		t.Errorf("mounted outside the share:\n%s", mi)
	}
	// The container directory itself replaced by a link is refused.
	dir3 := filepath.Join(s.shared, "c3")
	if err := os.Symlink(outside, dir3); err != nil {
		t.Fatal(err)
	}
	if _, err := openRootNoFollow(dir3); !errors.Is(err, unix.ELOOP) && !errors.Is(err, unix.ENOTDIR) {
		t.Errorf("opening a linked container dir: %v, want ELOOP", err)
	}
}
