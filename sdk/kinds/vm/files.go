package vm

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"

	"github.com/magnetar-io/magnetar/sdk/backend"
)

// rootsDir holds, under a sandbox's directory (never shared with the
// guest), a bind mount of each container's root file system:
// <rootsDir>/<container>. It is what the file service reads and writes
// ([backend.HostRooter]).
//
// A container's root is mounted on the host at <shared>/<id>/rootfs and
// the guest sees that very directory through 9p (no cache: what the host
// writes there the guest reads at once, and what the guest writes
// reaches the host's file system, and its inotify, through QEMU's own
// system calls). The path under the shared directory is not handed out,
// though: the guest can rename <id> and plant links in its place, so the
// file service would resolve a path the guest chose. The bind mount under
// the sandbox's own directory is made once, through a handle opened
// without following links, and no component of its path is the guest's.
const rootsDir = "roots"

var _ backend.HostRooter = (*container)(nil)

// HostRoot returns the host bind mount of the container's root file
// system and whether the container's root is read-only; "" for a
// container created by a sandboxer from before the bind mounts.
func (c *container) HostRoot() (string, bool) {
	return c.hostRoot, c.readonly
}

// hostRootPath is where container id's root is bound on the host.
func (s *sandbox) hostRootPath(id string) string {
	return filepath.Join(s.cfg.Dir, rootsDir, id)
}

// bindHostRoot binds the rootfs mounted at dir/rootfs (dir opened as
// root) to the container's host root path, and returns that path.
func (s *sandbox) bindHostRoot(id string, root *os.Root) (string, error) {
	target := s.hostRootPath(id)
	if err := os.MkdirAll(filepath.Dir(target), 0o700); err != nil {
		return "", err
	}
	// A directory left by a crash between its creation and the bind:
	// nothing is mounted there, or it is unmounted now.
	if err := unmountUnder(target); err != nil {
		return "", err
	}
	if err := os.Mkdir(target, 0o700); err != nil && !errors.Is(err, os.ErrExist) {
		return "", err
	}
	err := mountAt(root, "rootfs", func(src string) error {
		return unix.Mount(src, target, "", unix.MS_BIND, "")
	})
	if err != nil {
		_ = os.Remove(target)
		return "", fmt.Errorf("bind the root of container %q for the file service: %w", id, err)
	}
	return target, nil
}

// recoveredHostRoot returns container id's host root path if its bind
// mount is there (it outlives the sandboxer's process), else "".
func (s *sandbox) recoveredHostRoot(id string) string {
	p := s.hostRootPath(id)
	var st unix.Statx_t
	if err := unix.Statx(unix.AT_FDCWD, p, unix.AT_SYMLINK_NOFOLLOW, unix.STATX_TYPE, &st); err != nil {
		return ""
	}
	if st.Attributes_mask&unix.STATX_ATTR_MOUNT_ROOT == 0 || st.Attributes&unix.STATX_ATTR_MOUNT_ROOT == 0 {
		return ""
	}
	return p
}

// removeHostRoot unmounts and removes container id's host root path.
func (s *sandbox) removeHostRoot(id string) error {
	p := s.hostRootPath(id)
	if err := unmountUnder(p); err != nil {
		return err
	}
	if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}

// rootReadonly is the spec's root.readonly.
func rootReadonly(cfg backend.ContainerConfig) bool {
	return cfg.Spec != nil && cfg.Spec.Root != nil && cfg.Spec.Root.Readonly
}
