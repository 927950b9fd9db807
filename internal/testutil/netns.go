package testutil

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

// NetNS makes a new network namespace bind-mounted at dir/name (dir is
// created) with unshare(1), removed when the test ends, and returns its
// path. It needs root (see [RequireRoot]).
func NetNS(t testing.TB, dir, name string) string {
	t.Helper()
	RequireRoot(t, "network namespaces")
	RequireBinary(t, "unshare")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = unix.Unmount(p, unix.MNT_DETACH)
		_ = os.Remove(p)
	})
	if out, err := exec.Command("unshare", "--net="+p, "true").CombinedOutput(); err != nil {
		t.Fatalf("unshare --net=%s: %v\n%s", p, err, out)
	}
	return p
}
