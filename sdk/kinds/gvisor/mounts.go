package gvisor

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/containerd/errdefs"
	securejoin "github.com/cyphar/filepath-securejoin"
	"github.com/magnetar-io/magnetar/sdk/kinds/internal/binds"
	"github.com/moby/sys/mountinfo"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// readOnlyBinds makes a spec's read-only bind mounts mean in gVisor what
// they mean with runc. In the sentry a bind mount of a host directory is
// one mount, whatever is mounted below that directory on the host: the
// gofer serves the files of the host's submounts as part of it. So:
//
//   - "rro" (recursive read-only, which runsc 20240729 does not know and
//     would ignore, leaving the mount writable) becomes "ro": the whole
//     tree is read-only in the sentry, submounts included;
//   - a non-recursive "ro" rbind of a directory with submounts on the host
//     gets one bind mount per submount (binds.Submounts).
//
// mounts lists the host's mounts (/proc/self/mountinfo); nil reads them
// when a read-only bind mount needs it.
func readOnlyBinds(ms []specs.Mount, mounts []*mountinfo.Info) []specs.Mount {
	out := binds.Submounts(ms, mounts)
	for j, m := range out {
		i := slices.Index(m.Options, "rro")
		if !binds.IsBind(m) || i < 0 {
			continue
		}
		m.Options = slices.Clone(m.Options)
		m.Options[i] = "ro"
		if slices.Contains(m.Options[:i], "ro") || slices.Contains(m.Options[i+1:], "ro") {
			m.Options = slices.Delete(m.Options, i, i+1)
		}
		out[j] = m
	}
	return out
}

// readonlyPaths does what runsc 20240729 ignores: the spec's
// linux.readonlyPaths. Each path becomes a read-only bind mount of the
// host directory or file the container sees there (in its root file
// system rootfs, or in the bind mount holding it); a path that is a
// mount's destination makes that mount read-only. The spec's mounts below
// a path are mounted again after it, so that they stay visible, as runc
// leaves them. Paths in the sentry's own /proc and /sys are left: they
// are gVisor's files, not the host's (Linux's defaults name /proc/sys,
// /proc/bus and the like, which the host's kernel serves under runc); a
// path that does not exist is left, as runc leaves it; one in another
// file system of the sentry (a tmpfs) fails with InvalidArgument. Symbolic
// links resolve inside the root (or the bind mount's source).
func readonlyPaths(spec *specs.Spec, rootfs string) error {
	if spec.Linux == nil || len(spec.Linux.ReadonlyPaths) == 0 {
		return nil
	}
	for _, p := range spec.Linux.ReadonlyPaths {
		p = filepath.Clean("/" + p)
		// The mount holding p: the last one whose destination covers it.
		holder := -1
		for i, m := range spec.Mounts {
			d := filepath.Clean(m.Destination)
			if d == p || d == "/" || strings.HasPrefix(p, d+"/") {
				holder = i
			}
		}
		if holder >= 0 && filepath.Clean(spec.Mounts[holder].Destination) == p {
			m := &spec.Mounts[holder]
			m.Options = append(slices.DeleteFunc(slices.Clone(m.Options), func(o string) bool { return o == "rw" }), "ro")
			continue
		}
		base, dest := rootfs, "/"
		if holder >= 0 {
			m := spec.Mounts[holder]
			switch {
			case binds.IsBind(m):
				base, dest = m.Source, filepath.Clean(m.Destination)
			case m.Type == "proc" || m.Type == "sysfs" || m.Type == "cgroup" || m.Type == "cgroup2" || m.Type == "mqueue":
				continue
			default:
				return fmt.Errorf("read-only path %q lies in the %s mounted at %s, part of which gVisor cannot make read-only: %w", p, m.Type, m.Destination, errdefs.ErrInvalidArgument)
			}
		} else if p == "/proc" || strings.HasPrefix(p, "/proc/") || p == "/sys" || strings.HasPrefix(p, "/sys/") {
			continue
		}
		if base == "" {
			return fmt.Errorf("read-only path %q: the container has no root file system on the host: %w", p, errdefs.ErrInvalidArgument)
		}
		rel, _ := filepath.Rel(dest, p)
		src, err := securejoin.SecureJoin(base, rel)
		if err != nil {
			return fmt.Errorf("read-only path %q: %w", p, err)
		}
		if _, err := os.Stat(src); errors.Is(err, os.ErrNotExist) {
			continue
		} else if err != nil {
			return fmt.Errorf("read-only path %q: %w", p, err)
		}
		// Where the path leads once its links are resolved, in the
		// container.
		inside, err := filepath.Rel(base, src)
		if err != nil {
			return fmt.Errorf("read-only path %q: %w", p, err)
		}
		target := filepath.Join(dest, inside)
		spec.Mounts = append(spec.Mounts, specs.Mount{Destination: target, Type: "bind", Source: src, Options: []string{"rbind", "ro"}})
		for _, m := range spec.Mounts[:len(spec.Mounts)-1] {
			if strings.HasPrefix(filepath.Clean(m.Destination), target+"/") {
				spec.Mounts = append(spec.Mounts, m)
			}
		}
	}
	return nil
}
