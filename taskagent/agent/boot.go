package agent

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// baseMount is a file system PID 1 mounts at boot.
type baseMount struct {
	source, target, fstype string
	flags                  uintptr
	data                   string
}

var baseMounts = []baseMount{
	{"proc", "/proc", "proc", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, ""},
	{"sysfs", "/sys", "sysfs", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, ""},
	{"devtmpfs", "/dev", "devtmpfs", unix.MS_NOSUID, "mode=0755"},
	{"devpts", "/dev/pts", "devpts", unix.MS_NOSUID | unix.MS_NOEXEC, "newinstance,ptmxmode=0666,mode=0620,gid=5"},
	{"shm", "/dev/shm", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV, "mode=1777"},
	{"mqueue", "/dev/mqueue", "mqueue", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, ""},
	{"tmpfs", "/run", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV, "mode=0755"},
	{"tmpfs", "/tmp", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV, "mode=1777"},
	{"cgroup2", "/sys/fs/cgroup", "cgroup2", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, "nsdelegate"},
}

// Boot prepares the guest as PID 1: it first moves the initramfs onto a
// tmpfs root and re-executes itself there (runc's pivot_root fails on the
// initial rootfs), then mounts the basic file systems, loads the kernel
// modules and brings up loopback.
func (a *Agent) Boot(ctx context.Context) error {
	start := time.Now()
	if needSwitchRoot() {
		// Returns only on error; on success /init starts again on a tmpfs root.
		return fmt.Errorf("boot: switch root: %w", switchRoot())
	}
	for _, m := range baseMounts {
		if err := os.MkdirAll(m.target, 0o755); err != nil {
			return fmt.Errorf("boot: %w", err)
		}
		if err := unix.Mount(m.source, m.target, m.fstype, m.flags, m.data); err != nil && !errors.Is(err, unix.EBUSY) {
			return fmt.Errorf("boot: mount %s on %s: %w", m.fstype, m.target, err)
		}
	}
	for name, target := range map[string]string{
		"/dev/ptmx": "pts/ptmx", "/dev/fd": "/proc/self/fd", "/dev/stdin": "/proc/self/fd/0",
		"/dev/stdout": "/proc/self/fd/1", "/dev/stderr": "/proc/self/fd/2",
	} {
		_ = os.Remove(name) // devtmpfs makes a ptmx node; the devpts instance's is wanted
		if err := os.Symlink(target, name); err != nil {
			return fmt.Errorf("boot: %w", err)
		}
	}
	mounted := time.Now()
	n, err := a.loadModules(ctx)
	if err != nil {
		return err
	}
	loaded := time.Now()
	if err := linkUp("lo"); err != nil {
		return fmt.Errorf("boot: loopback: %w", err)
	}
	if err := os.Setenv("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"); err != nil {
		return fmt.Errorf("boot: %w", err)
	}
	a.log().Info("booted", "mounts", mounted.Sub(start), "modules", n, "modules_time", loaded.Sub(mounted), "total", time.Since(start))
	return nil
}

func linkUp(name string) error {
	l, err := netlink.LinkByName(name)
	if err != nil {
		return err
	}
	return netlink.LinkSetUp(l)
}

// loadModules loads the modules named in ModulesDir/order, in order. A
// missing order file means there is nothing to load (a custom image with a
// kernel that has everything built in).
func (a *Agent) loadModules(ctx context.Context) (int, error) {
	f, err := os.Open(filepath.Join(a.opts.ModulesDir, "order"))
	if errors.Is(err, os.ErrNotExist) {
		a.log().Info("no module list; loading none", "dir", a.opts.ModulesDir)
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("boot: %w", err)
	}
	defer f.Close()
	order, err := ParseModuleOrder(f)
	if err != nil {
		return 0, fmt.Errorf("boot: %w", err)
	}
	for _, m := range order {
		if err := ctx.Err(); err != nil {
			return 0, err
		}
		path := m
		if !filepath.IsAbs(path) {
			path = filepath.Join(a.opts.ModulesDir, m)
		}
		t := time.Now()
		if err := loadModule(path); err != nil {
			return 0, fmt.Errorf("boot: load module %s: %w", m, err)
		}
		a.log().Debug("module loaded", "module", m, "took", time.Since(t))
	}
	return len(order), nil
}

func loadModule(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := unix.FinitModule(int(f.Fd()), "", 0); err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("finit_module: %w", err)
	}
	return nil
}

// ParseModuleOrder reads a module list: one module file per line, in load
// order (dependencies first). Blank lines and lines starting with # are
// skipped; duplicates are kept once, at their first position.
func ParseModuleOrder(r io.Reader) ([]string, error) {
	var out []string
	seen := map[string]bool{}
	s := bufio.NewScanner(r)
	for s.Scan() {
		line := strings.TrimSpace(s.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		// Tolerate modprobe --show-depends output ("insmod /path/x.ko opts").
		if f := strings.Fields(line); len(f) > 1 {
			switch f[0] {
			case "insmod":
				line = f[1]
			case "builtin":
				continue
			default:
				return nil, fmt.Errorf("module order: bad line %q", line)
			}
		}
		if !seen[line] {
			seen[line] = true
			out = append(out, line)
		}
	}
	if err := s.Err(); err != nil {
		return nil, fmt.Errorf("module order: %w", err)
	}
	return out, nil
}
