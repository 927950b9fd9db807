package engine

import (
	"errors"
	"os"
	"path/filepath"
	"slices"

	"golang.org/x/sys/unix"
)

// DefaultNetNSDirs are the directories where network namespaces given by
// path may be: ip-netns(8)'s and containerd's (CRI's pod namespaces).
var DefaultNetNSDirs = []string{"/run/netns", "/var/run/netns"}

// CheckNetNS checks that path is a network namespace, bind-mounted
// directly in one of dirs (symbolic links resolved) unless dirs is nil, and
// not the host's (PID 1's or this process's: the host network is its own
// option). The error is a [FieldError] naming field.
func CheckNetNS(field, path string, dirs []string) error {
	if !filepath.IsAbs(path) || filepath.Clean(path) != path || hasControl(path) {
		return Invalid(field, "%q must be an absolute, clean path", path)
	}
	real, err := filepath.EvalSymlinks(path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return Invalid(field, "%q does not exist", path)
		}
		return Invalid(field, "%q: %v", path, err)
	}
	var allowed []string
	for _, d := range dirs {
		if rd, err := filepath.EvalSymlinks(d); err == nil {
			allowed = append(allowed, rd)
		}
	}
	if dirs != nil && !slices.Contains(allowed, filepath.Dir(real)) {
		return Invalid(field, "%q is not in a network namespace directory (%v)", path, dirs)
	}
	// O_NONBLOCK: whatever it is, opening it must not wait (a FIFO).
	fd, err := unix.Open(real, unix.O_RDONLY|unix.O_CLOEXEC|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_NOCTTY, 0)
	if err != nil {
		return Invalid(field, "open %q: %v", path, err)
	}
	defer unix.Close(fd)
	var sfs unix.Statfs_t
	if err := unix.Fstatfs(fd, &sfs); err != nil || sfs.Type != unix.NSFS_MAGIC {
		return Invalid(field, "%q is not a namespace (not on nsfs)", path)
	}
	if t, err := unix.IoctlRetInt(fd, unix.NS_GET_NSTYPE); err != nil || t != unix.CLONE_NEWNET {
		return Invalid(field, "%q is not a network namespace", path)
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return Invalid(field, "stat %q: %v", path, err)
	}
	for _, host := range []string{"/proc/1/ns/net", "/proc/self/ns/net"} {
		var hst unix.Stat_t
		if unix.Stat(host, &hst) == nil && hst.Dev == st.Dev && hst.Ino == st.Ino {
			return Invalid(field, "%q is the host's network namespace: use the host network mode", path)
		}
	}
	return nil
}

// CheckNetNSPath checks a network namespace path from an API caller:
// [CheckNetNS] with the engine's directories ([Config.NetNSDirs]). A
// sandbox's spec is checked without them ([Engine.CreateSandbox]):
// containerd, the other caller, puts its pods' namespaces where its own
// configuration says (under its state dir with netns_mounts_under_state_dir).
func (e *Engine) CheckNetNSPath(field, path string) error {
	return CheckNetNS(field, path, e.netnsDirs)
}
