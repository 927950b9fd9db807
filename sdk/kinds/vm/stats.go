package vm

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/containerd/cgroups/v3"
	"github.com/containerd/cgroups/v3/cgroup1"
	cgroupsv2 "github.com/containerd/cgroups/v3/cgroup2"

	agentv1 "github.com/magnetar-io/magnetar/gen/magnetar/agent/v1"
	"github.com/magnetar-io/magnetar/sdk/backend"
	"github.com/magnetar-io/magnetar/sdk/kinds/internal/cgpath"
	"github.com/magnetar-io/magnetar/sdk/kinds/internal/cgstats"
)

var _ backend.SandboxStater = (*sandbox)(nil)

// statsHealthTimeout bounds the Health call SandboxStats makes for fresh
// guest numbers; the last periodic answer is used when it times out.
const statsHealthTimeout = 5 * time.Second

// clockTicks is USER_HZ, the unit of /proc/<pid>/stat times (100 on every
// Linux architecture Magnetar runs on).
const clockTicks = 100

// SandboxStats reports what the VM costs the host: the usage of the QEMU
// process's cgroup when it has one of its own (else of the QEMU process
// alone, from /proc), and in the info map the guest's memory and load,
// the health and clock-sync state and the agent's recent warnings.
func (s *sandbox) SandboxStats(ctx context.Context) (*backend.Stats, map[string]string, error) {
	now := time.Now().UTC()
	info := map[string]string{}
	s.mu.Lock()
	v := s.vm
	s.mu.Unlock()
	if v == nil || s.isGone() {
		info["vm"] = "not running"
		return &backend.Stats{Timestamp: now}, info, nil
	}
	st, src, err := hostUsage(v.Pid(), now)
	if err != nil {
		return nil, nil, fmt.Errorf("usage of vm %s: %w", s.cfg.ID, err)
	}
	info["host_usage"] = src
	if c := s.agentClient(); c != nil {
		hctx, cancel := context.WithTimeout(ctx, statsHealthTimeout)
		resp, err := c.Health(hctx, &agentv1.HealthRequest{})
		cancel()
		if err == nil {
			s.mon.observeFresh(resp)
		}
	}
	s.mon.describe(info)
	return st, info, nil
}

// hostUsage reads the usage of the process pid: its cgroup's when that
// cgroup is not the caller's own (which would count the sandboxer and the
// other VMs too), else the process's own CPU time and resident memory.
func hostUsage(pid int, at time.Time) (*backend.Stats, string, error) {
	if cgroups.Mode() == cgroups.Unified {
		path, err := cgroupsv2.PidGroupPath(pid)
		self, serr := cgroupsv2.PidGroupPath(os.Getpid())
		if err == nil && serr == nil && path != self && path != "/" {
			m, err := cgroupsv2.Load(path)
			if err == nil {
				if mt, err := m.Stat(); err == nil {
					return cgstats.FromV2(mt, at), "cgroup " + path, nil
				}
			}
		}
	} else if own, err := ownV1Cgroup(pid); err == nil && own != "" {
		cg, err := cgroup1.Load(cgpath.V1PidPath(pid), cgroup1.WithHiearchy(cgpath.V1Hierarchy))
		if err == nil {
			if mt, err := cg.Stat(cgroup1.IgnoreNotExist); err == nil {
				return cgstats.FromV1(mt, at), "cgroup " + own, nil
			}
		}
	}
	st, err := procUsage(fmt.Sprintf("/proc/%d", pid), at)
	if err != nil {
		return nil, "", err
	}
	return st, fmt.Sprintf("process %d", pid), nil
}

// ownV1Cgroup returns pid's memory cgroup on a cgroup v1 host when both
// its memory and cpuacct cgroups differ from the caller's, else "".
func ownV1Cgroup(pid int) (string, error) {
	theirs, err := cgroup1.ParseCgroupFile(fmt.Sprintf("/proc/%d/cgroup", pid))
	if err != nil {
		return "", err
	}
	ours, err := cgroup1.ParseCgroupFile("/proc/self/cgroup")
	if err != nil {
		return "", err
	}
	for _, sub := range []string{"memory", "cpuacct"} {
		if theirs[sub] == "" || theirs[sub] == ours[sub] || theirs[sub] == "/" {
			return "", nil
		}
	}
	return theirs["memory"], nil
}

// procUsage reads a process's CPU time and resident memory from its /proc
// directory.
func procUsage(dir string, at time.Time) (*backend.Stats, error) {
	stat, err := os.ReadFile(dir + "/stat")
	if err != nil {
		return nil, err
	}
	status, err := os.ReadFile(dir + "/status")
	if err != nil {
		return nil, err
	}
	cpu, err := parseProcStatCPU(stat)
	if err != nil {
		return nil, err
	}
	rss, threads := parseProcStatus(status)
	return &backend.Stats{
		Timestamp: at, CPUUsageNanos: cpu,
		MemoryUsageBytes: rss, MemoryWorkingBytes: rss, Pids: threads,
	}, nil
}

// parseProcStatCPU returns utime+stime of /proc/<pid>/stat in nanoseconds.
func parseProcStatCPU(b []byte) (uint64, error) {
	// The command (field 2) is in parentheses and may hold spaces.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, fmt.Errorf("malformed /proc stat %q", b)
	}
	f := strings.Fields(string(b[i+1:]))
	// f[0] is field 3 (state); utime and stime are fields 14 and 15.
	if len(f) < 13 {
		return 0, fmt.Errorf("malformed /proc stat %q", b)
	}
	ut, err1 := strconv.ParseUint(f[11], 10, 64)
	stime, err2 := strconv.ParseUint(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("malformed /proc stat %q", b)
	}
	return (ut + stime) * uint64(time.Second/clockTicks), nil
}

// parseProcStatus returns VmRSS in bytes and Threads of
// /proc/<pid>/status.
func parseProcStatus(b []byte) (rss, threads uint64) {
	for _, l := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(l, ":")
		if !ok {
			continue
		}
		f := strings.Fields(v)
		if len(f) == 0 {
			continue
		}
		n, err := strconv.ParseUint(f[0], 10, 64)
		if err != nil {
			continue
		}
		switch k {
		case "VmRSS":
			rss = n * 1024
		case "Threads":
			threads = n
		}
	}
	return rss, threads
}

func (m *monitors) observeFresh(resp *agentv1.HealthResponse) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.health, m.healthAt = resp, time.Now()
}

// describe adds the guest and monitor state to info.
func (m *monitors) describe(info map[string]string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if h := m.health; h != nil {
		info["guest_mem_total_bytes"] = strconv.FormatUint(h.GetMemTotalBytes(), 10)
		info["guest_mem_available_bytes"] = strconv.FormatUint(h.GetMemAvailableBytes(), 10)
		info["guest_load"] = fmt.Sprintf("%.2f %.2f %.2f", h.GetLoad1(), h.GetLoad5(), h.GetLoad15())
		info["agent_version"] = h.GetVersion()
		info["health_checked_at"] = m.healthAt.UTC().Format(time.RFC3339)
	}
	info["health_failures"] = strconv.Itoa(m.failures)
	if m.dead != nil {
		info["health"] = "dead: " + m.dead.Error()
	}
	info["clock_syncs"] = strconv.Itoa(m.syncs)
	if m.syncs > 0 {
		info["clock_synced_at"] = m.syncAt.UTC().Format(time.RFC3339)
		info["clock_sync_reason"] = m.syncReason
		info["clock_drift"] = m.drift.String()
	}
	if m.syncErr != nil {
		info["clock_sync_error"] = m.syncErr.Error()
	}
	if len(m.logs.lines) > 0 {
		info["agent_log"] = strings.Join(m.logs.lines, "\n")
	}
}
