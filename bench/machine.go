package main

import (
	"bufio"
	"bytes"
	"context"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/magnetar-io/magnetar/internal/harness"
)

// Machine describes the host a run measured.
type Machine struct {
	CPU      string `json:"cpu"`
	Cores    int    `json:"cores"`
	MemoryMB int64  `json:"memoryMB"`
	Kernel   string `json:"kernel"`
	// Load is /proc/loadavg's 1-minute figure when the run started: other
	// work on the host shows here.
	Load float64 `json:"load"`
	// KVM tells whether /dev/kvm opens (else QEMU runs under TCG).
	KVM bool `json:"kvm"`
	// VMAccel is the accelerator the vm kind chose (its sandbox's "accel"
	// and "accel_reason" info: a /dev/kvm that opens may still run no
	// guest), empty when no vm sandbox was measured.
	VMAccel string `json:"vmAccel,omitempty"`
	// Versions of the software measured, by program.
	Versions map[string]string `json:"versions"`
}

// describeMachine reads the CPU, memory, kernel and the versions of
// containerd, runc, runsc, QEMU, Go and Magnetar (binDir holds
// containerd and magnetar-sandboxer).
func describeMachine(ctx context.Context, binDir string) Machine {
	m := Machine{Cores: runtime.NumCPU(), Versions: map[string]string{}}
	if f, err := os.Open("/proc/cpuinfo"); err == nil {
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			if k, v, ok := strings.Cut(sc.Text(), ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPU = strings.TrimSpace(v)
				break
			}
		}
		f.Close()
	}
	if data, err := os.ReadFile("/proc/meminfo"); err == nil {
		for line := range strings.Lines(string(data)) {
			if f := strings.Fields(line); len(f) >= 2 && f[0] == "MemTotal:" {
				kb, _ := strconv.ParseInt(f[1], 10, 64)
				m.MemoryMB = kb / 1024
			}
		}
	}
	var u unix.Utsname
	if unix.Uname(&u) == nil {
		m.Kernel = unix.ByteSliceToString(u.Release[:])
	}
	if data, err := os.ReadFile("/proc/loadavg"); err == nil {
		if f := strings.Fields(string(data)); len(f) > 0 {
			m.Load, _ = strconv.ParseFloat(f[0], 64)
		}
	}
	if f, err := os.OpenFile("/dev/kvm", os.O_RDWR, 0); err == nil {
		m.KVM = true
		f.Close()
	}
	m.Versions["go"] = runtime.Version()
	for name, argv := range map[string][]string{
		"containerd": {binDir + "/containerd", "--version"},
		"runc":       {"runc", "--version"},
		"runsc":      {"runsc", "--version"},
		"qemu":       {"qemu-system-x86_64", "--version"},
		"magnetar":   {binDir + "/magnetar-sandboxer", "--version"},
	} {
		m.Versions[name] = firstLine(ctx, argv...)
	}
	// A build from a checkout says "devel": name the commit measured.
	if root, err := harness.ModuleRoot(); err == nil {
		if c := firstLine(ctx, "git", "-C", root, "describe", "--always", "--dirty"); c != "" {
			m.Versions["magnetar"] += " (commit " + c + ")"
		}
	}
	return m
}

// firstLine runs argv and returns the first line of its output ("" if it
// fails).
func firstLine(ctx context.Context, argv ...string) string {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, argv[0], argv[1:]...).CombinedOutput()
	if err != nil {
		return ""
	}
	line, _, _ := bytes.Cut(bytes.TrimSpace(out), []byte("\n"))
	return string(line)
}
