package gvisor

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/magnetar-io/magnetar/sdk/kinds/internal/reaper"
)

// killLeftovers kills the runsc processes that runsc itself no longer
// knows: those of a `runsc create` cut short (by CommandTimeout, or killed
// with the sandboxer) before it saved its state, which `runsc delete
// --force` then cannot find. They are found by their command line, which
// names the bundle or the sandbox's directory (one of marks, as a whole
// argument), and by the cgroup runsc put them in (cgroupPath under every
// hierarchy). Each is signalled through a pidfd opened before its command
// line is checked, so a reused pid is never killed; one that is a child
// of this process (the subreaper) is reaped. It waits (bounded) for them
// to exit, then removes the cgroup.
func (b *Backend) killLeftovers(marks []string, cgroupPath string) {
	pids := map[int]bool{}
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		pids[pid] = false // its command line tells
	}
	for _, dir := range cgroupDirs(cgroupPath) {
		data, _ := os.ReadFile(filepath.Join(dir, "cgroup.procs"))
		for _, f := range strings.Fields(string(data)) {
			if pid, err := strconv.Atoi(f); err == nil && pid != os.Getpid() {
				pids[pid] = true // in the sandbox's cgroup: runsc's
			}
		}
	}
	var fds []int
	for pid, inCgroup := range pids {
		if !inCgroup && !runscProcess(pid, marks) {
			continue
		}
		fd, err := unix.PidfdOpen(pid, 0)
		if err != nil {
			continue
		}
		// Checked again once the pidfd holds the process: the pid may
		// have been reused in between.
		if inCgroup && !inCgroupOf(pid, cgroupPath) || !inCgroup && !runscProcess(pid, marks) {
			unix.Close(fd)
			continue
		}
		reaper.Watch(b.stop, &b.wg, pid, func(int) {})
		_ = unix.PidfdSendSignal(fd, unix.SIGKILL, nil, 0)
		fds = append(fds, fd)
	}
	deadline := time.Now().Add(5 * time.Second)
	for _, fd := range fds {
		// A pidfd becomes readable when its process exits.
		if ms := time.Until(deadline).Milliseconds(); ms > 0 {
			_, _ = unix.Poll([]unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}, int(ms))
		}
		unix.Close(fd)
	}
	for _, dir := range cgroupDirs(cgroupPath) {
		removeCgroup(dir, deadline)
	}
}

// runscProcess reports whether pid is a runsc sandbox or gofer process
// with one of marks as a whole argument (runsc commands this process runs,
// `runsc exec` and `runsc wait`, are not: they are waited for).
func runscProcess(pid int, marks []string) bool {
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline")
	if err != nil || len(data) == 0 {
		return false
	}
	args := strings.Split(string(bytes.TrimRight(data, "\x00")), "\x00")
	if args[0] != "runsc-sandbox" && args[0] != "runsc-gofer" {
		return false
	}
	for _, a := range args[1:] {
		if slices.Contains(marks, a) {
			return true
		}
	}
	return false
}

// inCgroupOf reports whether pid is in cgroup path p (in a hierarchy).
func inCgroupOf(pid int, p string) bool {
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cgroup")
	if err != nil {
		return false
	}
	for _, l := range strings.Split(string(data), "\n") {
		if strings.HasSuffix(l, ":"+p) {
			return true
		}
	}
	return false
}

// cgroupDirs returns the existing directories of cgroup path p: under
// every cgroup v1 hierarchy, or the unified one.
func cgroupDirs(p string) []string {
	if p == "" || p == "/" {
		return nil
	}
	var out []string
	if d := filepath.Join("/sys/fs/cgroup", p); fileExists(filepath.Join(d, "cgroup.procs")) {
		out = append(out, d)
	}
	hs, _ := filepath.Glob(filepath.Join("/sys/fs/cgroup", "*", p))
	for _, d := range hs {
		if fileExists(filepath.Join(d, "cgroup.procs")) {
			out = append(out, d)
		}
	}
	return out
}

// removeCgroup removes a cgroup directory once its processes are gone
// (rmdir fails with EBUSY until then), trying until deadline.
func removeCgroup(dir string, deadline time.Time) {
	for {
		// Done (or gone, or another error) unless still busy.
		if err := unix.Rmdir(dir); !errors.Is(err, unix.EBUSY) || time.Now().After(deadline) {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}
