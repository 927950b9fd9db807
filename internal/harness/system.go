package harness

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// modulePath is the root module; DefaultBinDir and ImportPause locate the
// repository through its go.mod.
const modulePath = "github.com/magnetar-io/magnetar"

// ModuleRoot returns the root directory of the magnetar module, found by
// walking up from the working directory (tests run in their package
// directory, the demo scripts in the repository).
func ModuleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		data, err := os.ReadFile(filepath.Join(dir, "go.mod"))
		if err == nil && bytes.HasPrefix(bytes.TrimSpace(data), []byte("module "+modulePath+"\n")) {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf("harness: not inside the %s module", modulePath)
		}
		dir = parent
	}
}

// DefaultBinDir returns $MAGNETAR_BIN if set, else <module root>/.tmp/bin,
// where `make tools` puts containerd, ctr, crictl and critest.
func DefaultBinDir() (string, error) {
	if d := os.Getenv("MAGNETAR_BIN"); d != "" {
		return d, nil
	}
	root, err := ModuleRoot()
	if err != nil {
		return "", err
	}
	return filepath.Join(root, ".tmp", "bin"), nil
}

// CheckPrerequisites reports why Start cannot run on this machine, or nil:
// not root, tools missing from binDir (`make tools`), or Debian packages
// missing from PATH (`make deps`). Tests call it to skip with its message.
func CheckPrerequisites(binDir string) error {
	var problems []string
	if os.Geteuid() != 0 {
		problems = append(problems, "not running as root")
	}
	var tools []string
	for _, b := range []string{"containerd", "ctr", "crictl", "containerd-shim-runc-v2"} {
		if fi, err := os.Stat(filepath.Join(binDir, b)); err != nil || fi.Mode()&0o111 == 0 {
			tools = append(tools, b)
		}
	}
	if len(tools) > 0 {
		problems = append(problems, fmt.Sprintf("%s missing from %s (run `make tools`)", strings.Join(tools, ", "), binDir))
	}
	var pkgs []string
	for _, b := range []string{"runc", "unshare", "mount", "ip"} {
		if _, err := exec.LookPath(b); err != nil {
			pkgs = append(pkgs, b)
		}
	}
	for _, p := range []string{"/usr/lib/cni/bridge", "/usr/lib/cni/host-local", "/usr/lib/cni/loopback"} {
		if _, err := os.Stat(p); err != nil {
			pkgs = append(pkgs, p)
		}
	}
	if len(pkgs) > 0 {
		problems = append(problems, fmt.Sprintf("%s not installed (run `make deps`)", strings.Join(pkgs, ", ")))
	}
	if len(problems) > 0 {
		return errors.New("harness: " + strings.Join(problems, "; "))
	}
	return nil
}

// killNamespace SIGKILLs every process in the mount namespace ns (as read
// from /proc/PID/ns/mnt) and waits until they are gone. Only containerd and
// the shims it started live there.
func killNamespace(ns string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		pids := namespacePids(ns)
		if len(pids) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("harness: processes %v still in containerd's mount namespace", pids)
		}
		for _, pid := range pids {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// namespacePids lists the live (non-zombie) processes whose mount namespace
// is ns.
func namespacePids(ns string) []int {
	entries, _ := os.ReadDir("/proc")
	var pids []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if link, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/mnt", pid)); err != nil || link != ns {
			continue
		}
		if zombie(pid) {
			continue
		}
		pids = append(pids, pid)
	}
	return pids
}

func zombie(pid int) bool {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true
	}
	// pid (comm) state ...: comm may contain spaces and parentheses.
	i := bytes.LastIndexByte(stat, ')')
	return i < 0 || i+2 >= len(stat) || stat[i+2] == 'Z' || stat[i+2] == 'X'
}

// cgroupRoots returns the mount points of the cgroup hierarchies (v1
// controllers and cgroup2).
func cgroupRoots() ([]string, error) {
	mounts, err := readMountinfo()
	if err != nil {
		return nil, err
	}
	var roots []string
	for _, m := range mounts {
		if m.fstype == "cgroup" || m.fstype == "cgroup2" {
			roots = append(roots, m.point)
		}
	}
	return roots, nil
}

// snapshotCgroups records every cgroup directory that exists now.
func snapshotCgroups() (map[string]bool, error) {
	roots, err := cgroupRoots()
	if err != nil {
		return nil, err
	}
	seen := map[string]bool{}
	for _, root := range roots {
		_ = filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				seen[p] = true
			}
			return nil
		})
	}
	return seen, nil
}

// removeCgroups removes the cgroups named after the pod and container ids
// (killing what is still inside, in case a pod could not be removed), then,
// deepest first, the cgroup parents (relative to each hierarchy) and their
// ancestors that did not exist at Start. Non-empty directories are kept,
// and nothing else is touched: other programs on the host create cgroups
// concurrently.
func removeCgroups(ids []string, parents []string, before map[string]bool) error {
	want := map[string]bool{}
	for _, id := range ids {
		want[id] = true
	}
	roots, err := cgroupRoots()
	if err != nil {
		return err
	}
	var errs []error
	candidates := map[string]bool{}
	for _, root := range roots {
		if len(want) > 0 {
			_ = filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
				if err == nil && d.IsDir() && want[d.Name()] {
					if err := removeCgroup(p); err != nil {
						errs = append(errs, err)
					}
					return filepath.SkipDir
				}
				return nil
			})
		}
		for _, parent := range parents {
			for p := filepath.Join(root, parent); strings.HasPrefix(p, root+"/") && !before[p]; p = filepath.Dir(p) {
				candidates[p] = true
			}
		}
	}
	ordered := make([]string, 0, len(candidates))
	for p := range candidates {
		ordered = append(ordered, p)
	}
	slices.SortFunc(ordered, func(a, b string) int { return strings.Count(b, "/") - strings.Count(a, "/") })
	for _, p := range ordered {
		_ = syscall.Rmdir(p) // ENOENT: never created; EBUSY: in use
	}
	return errors.Join(errs...)
}

// removeCgroup kills the processes of a leaf cgroup and removes it.
func removeCgroup(dir string) error {
	deadline := time.Now().Add(5 * time.Second)
	for {
		err := syscall.Rmdir(dir)
		if err == nil || errors.Is(err, syscall.ENOENT) {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("harness: remove cgroup %s: %w", dir, err)
		}
		procs, _ := os.ReadFile(filepath.Join(dir, "cgroup.procs"))
		for _, f := range strings.Fields(string(procs)) {
			if pid, err := strconv.Atoi(f); err == nil && pid > 0 {
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// unmountUnder lazily unmounts every mount point at or below dir in this
// process's mount namespace, deepest first.
func unmountUnder(dir string) error {
	mounts, err := readMountinfo()
	if err != nil {
		return err
	}
	var points []string
	for _, m := range mounts {
		if m.point == dir || strings.HasPrefix(m.point, dir+"/") {
			points = append(points, m.point)
		}
	}
	// Later mounts may stack on earlier ones: unmount in reverse order of
	// appearance, which is also deepest first for nested mounts.
	slices.Reverse(points)
	slices.SortStableFunc(points, func(a, b string) int { return strings.Count(b, "/") - strings.Count(a, "/") })
	var errs []error
	for _, p := range points {
		if err := syscall.Unmount(p, syscall.MNT_DETACH); err != nil && !errors.Is(err, syscall.EINVAL) && !errors.Is(err, syscall.ENOENT) {
			errs = append(errs, fmt.Errorf("harness: unmount %s: %w", p, err))
		}
	}
	return errors.Join(errs...)
}

// MountsUnder returns the mount points at or below dir in this process's
// mount namespace.
func MountsUnder(dir string) ([]string, error) {
	mounts, err := readMountinfo()
	if err != nil {
		return nil, err
	}
	var points []string
	for _, m := range mounts {
		if m.point == dir || strings.HasPrefix(m.point, dir+"/") {
			points = append(points, m.point)
		}
	}
	return points, nil
}

type mountEntry struct{ point, fstype string }

// readMountinfo parses /proc/self/mountinfo.
func readMountinfo() ([]mountEntry, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []mountEntry
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		// id parent major:minor root mountpoint options [optional...] - fstype source superoptions
		fields := strings.Fields(sc.Text())
		sep := slices.Index(fields, "-")
		if len(fields) < 5 || sep < 0 || sep+1 >= len(fields) {
			continue
		}
		out = append(out, mountEntry{point: unescapeMount(fields[4]), fstype: fields[sep+1]})
	}
	return out, sc.Err()
}

// unescapeMount decodes the octal escapes (\040 for space) of mountinfo.
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
