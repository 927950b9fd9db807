package agent

import (
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"

	"golang.org/x/sys/unix"
)

// switchedEnv marks the agent re-executed after switchRoot.
const switchedEnv = "MAGNETAR_AGENT_SWITCHED=1"

// needSwitchRoot reports whether / is the kernel's initial rootfs, on
// which pivot_root(2) fails: runc cannot start containers there.
func needSwitchRoot() bool {
	for _, e := range os.Environ() {
		if e == switchedEnv {
			return false
		}
	}
	var st unix.Statfs_t
	if err := unix.Statfs("/", &st); err != nil {
		return false
	}
	return st.Type == unix.RAMFS_MAGIC || st.Type == unix.TMPFS_MAGIC
}

// switchRoot moves the initramfs contents onto a fresh tmpfs, makes it the
// root (mount --move + chroot, as switch_root(8) does, freeing the old
// files) and re-executes /init there. It returns only on error.
func switchRoot() error {
	const newRoot = "/newroot"
	if err := os.MkdirAll(newRoot, 0o755); err != nil {
		return err
	}
	if err := unix.Mount("tmpfs", newRoot, "tmpfs", 0, "mode=0755"); err != nil {
		return fmt.Errorf("mount tmpfs root: %w", err)
	}
	ents, err := os.ReadDir("/")
	if err != nil {
		return err
	}
	for _, e := range ents {
		if e.Name() == "newroot" {
			continue
		}
		src := "/" + e.Name()
		if err := copyTree(src, filepath.Join(newRoot, e.Name())); err != nil {
			return fmt.Errorf("copy %s: %w", src, err)
		}
		if err := os.RemoveAll(src); err != nil {
			return fmt.Errorf("free %s: %w", src, err)
		}
	}
	if err := os.Chdir(newRoot); err != nil {
		return err
	}
	if err := unix.Mount(newRoot, "/", "", unix.MS_MOVE, ""); err != nil {
		return fmt.Errorf("move root: %w", err)
	}
	if err := unix.Chroot("."); err != nil {
		return fmt.Errorf("chroot: %w", err)
	}
	if err := os.Chdir("/"); err != nil {
		return err
	}
	return syscall.Exec("/init", os.Args, append(os.Environ(), switchedEnv))
}

// copyTree copies files, directories, symlinks and device nodes with their
// modes.
func copyTree(src, dst string) error {
	return filepath.WalkDir(src, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(src, path)
		if err != nil {
			return err
		}
		target := filepath.Join(dst, rel)
		info, err := d.Info()
		if err != nil {
			return err
		}
		mode := info.Mode()
		switch {
		case mode.IsDir():
			if err := os.Mkdir(target, mode.Perm()); err != nil && !os.IsExist(err) {
				return err
			}
			return os.Chmod(target, mode.Perm()|mode&(os.ModeSticky|os.ModeSetuid|os.ModeSetgid))
		case mode&os.ModeSymlink != 0:
			l, err := os.Readlink(path)
			if err != nil {
				return err
			}
			return os.Symlink(l, target)
		case mode&(os.ModeDevice|os.ModeCharDevice|os.ModeNamedPipe) != 0:
			st := info.Sys().(*syscall.Stat_t)
			return unix.Mknod(target, st.Mode, int(st.Rdev))
		default:
			return copyFile(path, target, mode.Perm())
		}
	})
}

func copyFile(src, dst string, perm os.FileMode) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, perm)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}
