package gvisor

import (
	"path/filepath"
	"slices"
	"strings"

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
//     gets one bind mount per submount (with the submount's own ro or rw),
//     so that they stay writable as runc leaves them, instead of being
//     read-only with their parent.
//
// mounts lists the host's mounts (/proc/self/mountinfo); nil reads them
// when a read-only bind mount needs it.
func readOnlyBinds(ms []specs.Mount, mounts []*mountinfo.Info) []specs.Mount {
	out := make([]specs.Mount, 0, len(ms))
	for _, m := range ms {
		if !isBind(m) {
			out = append(out, m)
			continue
		}
		if i := slices.Index(m.Options, "rro"); i >= 0 {
			m.Options = slices.Clone(m.Options)
			m.Options[i] = "ro"
			if slices.Contains(m.Options[:i], "ro") || slices.Contains(m.Options[i+1:], "ro") {
				m.Options = slices.Delete(m.Options, i, i+1)
			}
			out = append(out, m)
			continue
		}
		out = append(out, m)
		if !slices.Contains(m.Options, "ro") || !slices.Contains(m.Options, "rbind") {
			continue
		}
		if mounts == nil {
			var err error
			if mounts, err = mountinfo.GetMounts(nil); err != nil {
				continue // the mount stays read-only as a whole
			}
		}
		src := filepath.Clean(m.Source)
		if r, err := filepath.EvalSymlinks(src); err == nil {
			src = r
		}
		// mountinfo lists mounts in the order they were made: a
		// submount's parent comes first.
		for _, sub := range mounts {
			rel, ok := strings.CutPrefix(sub.Mountpoint, src+"/")
			if !ok || src == "/" {
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

// isBind reports whether m is a bind mount.
func isBind(m specs.Mount) bool {
	return m.Type == "bind" || slices.Contains(m.Options, "bind") || slices.Contains(m.Options, "rbind")
}
