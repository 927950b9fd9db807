package cgpath

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/containerd/cgroups/v3/cgroup1"
)

// V1PidPath is cgroup1.PidPath without its cost: cgroup1.PidPath reads
// /proc/self/mountinfo once per subsystem of the process, every call
// (half of a restarted sandboxer's recovery time with 50 pods on a cgroup
// v1 host). The cgroup v1 mount points are read once per process here;
// the process's own /proc/<pid>/cgroup is read at every call, as there.
func V1PidPath(pid int) cgroup1.Path {
	p := fmt.Sprintf("/proc/%d/cgroup", pid)
	paths, err := cgroup1.ParseCgroupFile(p)
	if err != nil {
		return errorPath(fmt.Errorf("parse cgroup file %s: %w", p, err))
	}
	dests, err := v1Destinations()
	if err != nil {
		return errorPath(err)
	}
	// Localized as cgroup1's existingPath does: relative to the root of
	// each subsystem's mount (nested cgroup namespaces).
	for n, path := range paths {
		dest, ok := dests[n]
		if !ok {
			return errorPath(fmt.Errorf("cgroup subsystem %q: %w", n, cgroup1.ErrNoCgroupMountDestination))
		}
		rel, err := filepath.Rel(dest, path)
		if err != nil {
			return errorPath(err)
		}
		if rel == "." {
			rel = dest
		}
		paths[n] = filepath.Join("/", rel)
	}
	return func(name cgroup1.Name) (string, error) {
		root, ok := paths[string(name)]
		if !ok {
			if root, ok = paths["name="+string(name)]; !ok {
				return "", cgroup1.ErrControllerNotActive
			}
		}
		return root, nil
	}
}

// V1Hierarchy is cgroup1.Default read once per process (it reads
// /proc/self/mountinfo and the huge page sizes at every call). The
// subsystems it returns keep only their mount's root: shared by every
// Load.
func V1Hierarchy() ([]cgroup1.Subsystem, error) { return v1Hierarchy() }

var v1Hierarchy = sync.OnceValues(cgroup1.Default)

// v1Destinations maps each cgroup v1 subsystem (and name=... hierarchy)
// to the root of its mount as this process sees it, from
// /proc/self/mountinfo (read once: the hierarchies are mounted at boot).
var v1Destinations = sync.OnceValues(func() (map[string]string, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	out := map[string]string{}
	s := bufio.NewScanner(f)
	for s.Scan() {
		fields := strings.Split(s.Text(), " ")
		if len(fields) < 10 || fields[len(fields)-3] != "cgroup" {
			continue
		}
		for _, opt := range strings.Split(fields[len(fields)-1], ",") {
			if _, seen := out[opt]; !seen {
				out[opt] = fields[3] // the first mount wins, as in cgroup1
			}
		}
	}
	return out, s.Err()
})

func errorPath(err error) cgroup1.Path {
	return func(cgroup1.Name) (string, error) { return "", err }
}
