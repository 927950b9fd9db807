// Package binds rewrites a container's bind mounts for kinds whose
// containers see a host directory through a file server (gVisor's gofer, a
// microVM's shared file system) rather than through the host's mount table.
package binds

import (
	"path/filepath"
	"slices"
	"strings"

	"github.com/moby/sys/mountinfo"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// IsBind reports whether m is a bind mount.
func IsBind(m specs.Mount) bool {
	return m.Type == "bind" || slices.Contains(m.Options, "bind") || slices.Contains(m.Options, "rbind")
}

// Submounts makes a non-recursive read-only bind mount mean what it means
// with runc on the host. Seen through a file server, a bind mount of a
// host directory is one mount, whatever is mounted below that directory
// on the host: the server serves the submounts' files as part of it, so a
// read-only parent would make them read-only too. Each "ro" rbind (not
// "rro") of a directory with submounts on the host is followed by one bind
// mount per submount, with the submount's own ro or rw, so that they stay
// writable as runc leaves them. Other mounts are copied unchanged; the
// caller's slice is not modified.
//
// mounts lists the host's mounts (/proc/self/mountinfo); nil reads them
// when a read-only bind mount needs it. If they cannot be read, the mount
// stays read-only as a whole (the safe side).
func Submounts(ms []specs.Mount, mounts []*mountinfo.Info) []specs.Mount {
	out := make([]specs.Mount, 0, len(ms))
	for _, m := range ms {
		out = append(out, m)
		if !IsBind(m) || !slices.Contains(m.Options, "ro") || !slices.Contains(m.Options, "rbind") || slices.Contains(m.Options, "rro") {
			continue
		}
		if mounts == nil {
			var err error
			if mounts, err = mountinfo.GetMounts(nil); err != nil {
				continue
			}
		}
		src := filepath.Clean(m.Source)
		if r, err := filepath.EvalSymlinks(src); err == nil {
			src = r
		}
		if src == "/" {
			continue
		}
		// mountinfo lists mounts in the order they were made: a
		// submount's parent comes first.
		for _, sub := range mounts {
			rel, ok := strings.CutPrefix(sub.Mountpoint, src+"/")
			if !ok {
				continue
			}
			opt := "rw"
			if slices.Contains(strings.Split(sub.Options, ","), "ro") {
				opt = "ro"
			}
			out = append(out, specs.Mount{
				Destination: filepath.Join(m.Destination, rel),
				Type:        "bind",
				Source:      sub.Mountpoint,
				Options:     []string{"rbind", opt},
			})
		}
	}
	return out
}

// Shared returns the destination of the first mount with shared
// (bidirectional) propagation, "rshared" or "shared": mounts made below it
// by the container are meant to reach the host, which a kind whose
// containers have a kernel of their own cannot do.
func Shared(ms []specs.Mount) (string, bool) {
	for _, m := range ms {
		if slices.Contains(m.Options, "rshared") || slices.Contains(m.Options, "shared") {
			return m.Destination, true
		}
	}
	return "", false
}
