package testutil

import (
	"bufio"
	"os"
	"path/filepath"
	"strings"
	"syscall"
)

// RemovingCgroups calls run (a TestMain's m.Run and its cleanup), then
// removes the cgroup directories parents (e.g. "/magnetar", relative to
// every mounted hierarchy) that did not exist before and are empty again:
// the default cgroup parent that the code under test creates, which the
// host keeps otherwise. It returns run's code, for os.Exit.
func RemovingCgroups(run func() int, parents ...string) int {
	var fresh []string
	for _, root := range cgroupRoots() {
		for _, p := range parents {
			dir := filepath.Join(root, p)
			if !strings.HasPrefix(dir, root+"/") {
				continue
			}
			if _, err := os.Stat(dir); os.IsNotExist(err) {
				fresh = append(fresh, dir)
			}
		}
	}
	code := run()
	for _, dir := range fresh {
		_ = syscall.Rmdir(dir) // EBUSY: not empty, kept
	}
	return code
}

// cgroupRoots returns the mount points of the cgroup hierarchies.
func cgroupRoots() []string {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	defer f.Close()
	var roots []string
	s := bufio.NewScanner(f)
	for s.Scan() {
		// id parent major:minor root mountpoint options ... - fstype ...
		fields := strings.Fields(s.Text())
		for i, f := range fields {
			if f == "-" && i+1 < len(fields) && i >= 5 {
				if fields[i+1] == "cgroup" || fields[i+1] == "cgroup2" {
					roots = append(roots, fields[4])
				}
				break
			}
		}
	}
	return roots
}
