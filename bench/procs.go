package main

import (
	"bufio"
	"bytes"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// proc is one process of a snapshot.
type proc struct {
	PID, PPID int
	// Class is what the process is for the report (see classOf).
	Class string
	// PSSKB is its proportional set size.
	PSSKB int64
}

// snapshot is the processes of the run (containerd, the sandboxer and
// their descendants, and the shims containerd started, which daemonize
// away from it) at one moment.
type snapshot map[int]proc

// total sums the PSS of the processes whose class is not skip.
func (s snapshot) total(skip string) int64 {
	var n int64
	for _, p := range s {
		if p.Class != skip {
			n += p.PSSKB
		}
	}
	return n
}

// growth returns what the processes of s added to those of base, per
// class (skip excluded from the total): the whole PSS of a process that
// is new, the change of one that was there before. A process of base that
// has ended since counts for nothing: its end is not the pods' doing (a
// runner that stops when idle, a shim of the kind measured before), and
// subtracting it made totals negative. new is the number of new processes.
func growth(base, s snapshot, skip string) (total int64, byClass map[string]int64, new int) {
	byClass = map[string]int64{}
	for pid, p := range s {
		d := p.PSSKB
		if b, ok := base[pid]; ok && b.Class == p.Class {
			d -= b.PSSKB
		} else {
			new++
		}
		byClass[p.Class] += d
		if p.Class != skip {
			total += d
		}
	}
	return total, byClass, new
}

// byClass sums PSS per class.
func (s snapshot) byClass() map[string]int64 {
	m := map[string]int64{}
	for _, p := range s {
		m[p.Class] += p.PSSKB
	}
	return m
}

// procTable reads every process's parent and command line from /proc.
type procInfo struct {
	ppid    int
	cmdline string // NULs replaced by spaces
	exe     string // base name of /proc/PID/exe ("" for kernel threads)
}

func readProcTable(root string) map[int]procInfo {
	t := map[int]procInfo{}
	ents, _ := os.ReadDir(root)
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		dir := filepath.Join(root, e.Name())
		stat, err := os.ReadFile(filepath.Join(dir, "stat"))
		if err != nil {
			continue // gone
		}
		ppid, ok := parsePPID(stat)
		if !ok {
			continue
		}
		cmd, _ := os.ReadFile(filepath.Join(dir, "cmdline"))
		exe, _ := os.Readlink(filepath.Join(dir, "exe"))
		t[pid] = procInfo{ppid: ppid, cmdline: string(bytes.ReplaceAll(cmd, []byte{0}, []byte{' '})), exe: filepath.Base(strings.TrimSuffix(exe, " (deleted)"))}
	}
	return t
}

// parsePPID reads the parent pid from /proc/PID/stat (the fourth field;
// the second, the command, is in parentheses and may hold anything).
func parsePPID(stat []byte) (int, bool) {
	i := bytes.LastIndexByte(stat, ')')
	if i < 0 {
		return 0, false
	}
	f := strings.Fields(string(stat[i+1:]))
	if len(f) < 2 {
		return 0, false
	}
	ppid, err := strconv.Atoi(f[1])
	return ppid, err == nil
}

// parsePSS reads the Pss line of /proc/PID/smaps_rollup, in kB.
func parsePSS(rollup []byte) (int64, bool) {
	sc := bufio.NewScanner(bytes.NewReader(rollup))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) >= 2 && f[0] == "Pss:" {
			n, err := strconv.ParseInt(f[1], 10, 64)
			return n, err == nil
		}
	}
	return 0, false
}

// takeSnapshot collects the processes descending from roots, and from
// every process whose command line mentions marker (the shims: their
// arguments name containerd's socket), with their PSS. sandboxer is the
// sandboxer's supervisor pid and containerd containerd's, for classOf.
func takeSnapshot(procRoot string, roots []int, marker string, containerd, sandboxer int) snapshot {
	t := readProcTable(procRoot)
	children := map[int][]int{}
	for pid, p := range t {
		children[p.ppid] = append(children[p.ppid], pid)
	}
	start := append([]int(nil), roots...)
	if marker != "" {
		for pid, p := range t {
			if strings.Contains(p.cmdline, marker) {
				start = append(start, pid)
			}
		}
	}
	seen := map[int]bool{}
	for len(start) > 0 {
		pid := start[len(start)-1]
		start = start[:len(start)-1]
		if seen[pid] {
			continue
		}
		if _, ok := t[pid]; !ok {
			continue
		}
		seen[pid] = true
		start = append(start, children[pid]...)
	}
	s := snapshot{}
	for pid := range seen {
		p := t[pid]
		rollup, err := os.ReadFile(filepath.Join(procRoot, strconv.Itoa(pid), "smaps_rollup"))
		if err != nil {
			continue // exited, or a kernel thread
		}
		pss, ok := parsePSS(rollup)
		if !ok {
			continue
		}
		s[pid] = proc{PID: pid, PPID: p.ppid, PSSKB: pss, Class: classOf(pid, p, t, containerd, sandboxer)}
	}
	return s
}

// The process classes of the report.
const (
	classContainerd = "containerd"
	classSandboxer  = "sandboxer"     // supervisor and worker
	classCopy       = "sandboxer-exe" // copies of its executable: Wasm runners, pod inits
	classShim       = "shim"
	classPause      = "pause"
	classRunc       = "runc"
	classRunsc      = "runsc"
	classQEMU       = "qemu"
	classWorkload   = "workload" // the containers' own processes
)

// classOf names what a process is.
func classOf(pid int, p procInfo, t map[int]procInfo, containerd, sandboxer int) string {
	switch {
	case pid == containerd:
		return classContainerd
	case pid == sandboxer:
		return classSandboxer
	case p.exe == "magnetar-sandboxer":
		// The worker runs with the supervisor's arguments.
		if p.ppid == sandboxer && strings.Contains(p.cmdline, "magnetar-sandboxer --listen ") {
			return classSandboxer
		}
		return classCopy
	case strings.HasPrefix(p.exe, "containerd-shim"):
		return classShim
	case p.exe == "pause":
		return classPause
	case p.exe == "runc":
		return classRunc
	case strings.HasPrefix(p.exe, "runsc") || strings.HasPrefix(p.cmdline, "runsc"):
		return classRunsc
	case strings.HasPrefix(p.exe, "qemu-system"):
		return classQEMU
	}
	return classWorkload
}
