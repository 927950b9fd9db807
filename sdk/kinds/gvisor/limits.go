package gvisor

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"

	"github.com/containerd/cgroups/v3"
	"github.com/containerd/cgroups/v3/cgroup1"
	cgroupsv2 "github.com/containerd/cgroups/v3/cgroup2"
	"github.com/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/magnetar-io/magnetar/internal/atomicfile"
	"github.com/magnetar-io/magnetar/internal/pdeathsig"
	"github.com/magnetar-io/magnetar/sdk/kinds/internal/cgpath"
)

// Resource limits of a gVisor pod.
//
// runsc (20240729) enforces no limit per container inside a sandbox and has
// no `update`: the sentry runs every container's processes, and only the
// sandbox's host cgroup bounds them. So the kind bounds that cgroup by what
// the pod's containers ask for together, as Kata sizes a pod's VM:
//
//   - memory: the larger of the pod's limit (CRI's pod resources) and the
//     sum of its containers' limits (when every container has one), plus
//     Config.MemoryOverhead for the sentry and gofers themselves;
//   - CPU quota: the larger of the pod's and the sum of the containers'
//     (each brought to a 100 ms period), when every container has one;
//   - CPU shares: the larger of the pod's and the containers' sum.
//
// The bound is recomputed when a container is created or updated (a
// removed container's share stays until the next change: the sentry may
// still hold the memory it freed). Each container also sees its own limits
// in the sentry's cgroup file system (`runsc write-control`), where
// runtimes such as the JVM and Go read them; nothing there is enforced.
// The containers' resources are kept in the sandbox's directory
// (limitsFile) for a restarted sandboxer.

// limitsFile holds the containers' resources, in the sandbox's directory.
const limitsFile = "limits.json"

// DefaultMemoryOverhead is Config.MemoryOverhead's default: what a
// sandbox's sentry and gofers use beyond their containers' memory (an idle
// pod's sentry and gofer take about 35 MB).
const DefaultMemoryOverhead = 64 << 20

// limits is what limitsFile holds.
type limits struct {
	Containers map[string]*specs.LinuxResources `json:"containers"`
}

// cpuPeriod is the period the containers' CPU quotas are added up in.
const cpuPeriod = 100000

// podBound computes the sandbox cgroup's memory limit, CPU quota and
// shares from the pod's resources and its containers'. A limit or quota of
// -1 is none; shares of 0 leave the cgroup's as they are.
func podBound(pod *specs.LinuxResources, ctrs map[string]*specs.LinuxResources, overhead int64) (memory, quota int64, shares uint64) {
	memory, quota = -1, -1
	var podMem, podQuota int64
	if pod != nil && pod.Memory != nil && pod.Memory.Limit != nil && *pod.Memory.Limit > 0 {
		podMem = *pod.Memory.Limit
	}
	if pod != nil && pod.CPU != nil {
		podQuota = normQuota(pod.CPU)
		if pod.CPU.Shares != nil {
			shares = *pod.CPU.Shares
		}
	}
	var memSum, quotaSum int64
	var sharesSum uint64
	memAll, quotaAll := len(ctrs) > 0, len(ctrs) > 0
	for _, r := range ctrs {
		if r != nil && r.Memory != nil && r.Memory.Limit != nil && *r.Memory.Limit > 0 {
			memSum = addSat(memSum, *r.Memory.Limit)
		} else {
			memAll = false
		}
		var q int64
		if r != nil && r.CPU != nil {
			q = normQuota(r.CPU)
			if r.CPU.Shares != nil {
				sharesSum += *r.CPU.Shares
			}
		}
		if q > 0 {
			quotaSum = addSat(quotaSum, q)
		} else {
			quotaAll = false
		}
	}
	if !memAll {
		memSum = 0
	}
	if !quotaAll {
		quotaSum = 0
	}
	if m := max(podMem, memSum); m > 0 {
		memory = addSat(m, overhead)
	}
	if q := max(podQuota, quotaSum); q > 0 {
		quota = q
	}
	return memory, quota, max(shares, sharesSum)
}

// normQuota is c's quota in a cpuPeriod period (0: none).
func normQuota(c *specs.LinuxCPU) int64 {
	if c.Quota == nil || *c.Quota <= 0 {
		return 0
	}
	period := uint64(cpuPeriod)
	if c.Period != nil && *c.Period > 0 {
		period = *c.Period
	}
	q := float64(*c.Quota) * cpuPeriod / float64(period)
	if q >= math.MaxInt64 {
		return math.MaxInt64
	}
	return max(int64(q), 1000) // the kernel's smallest quota: 1 ms
}

func addSat(a, b int64) int64 {
	if a > math.MaxInt64-b {
		return math.MaxInt64
	}
	return a + b
}

// mergeResources is old with what upd sets: the fields runc's update
// takes (memory, CPU, pids, block I/O weight, unified), each replaced when
// upd has it.
func mergeResources(old, upd *specs.LinuxResources) *specs.LinuxResources {
	out := &specs.LinuxResources{}
	if old != nil {
		*out = *old
	}
	if upd.Memory != nil {
		out.Memory = upd.Memory
	}
	if upd.CPU != nil {
		out.CPU = upd.CPU
	}
	if upd.Pids != nil {
		out.Pids = upd.Pids
	}
	if upd.BlockIO != nil {
		out.BlockIO = upd.BlockIO
	}
	if upd.Unified != nil {
		out.Unified = upd.Unified
	}
	if upd.HugepageLimits != nil {
		out.HugepageLimits = upd.HugepageLimits
	}
	return out
}

// loadLimits reads the containers' resources kept for this sandbox.
func (s *sandbox) loadLimits() error {
	data, err := os.ReadFile(filepath.Join(s.cfg.Dir, limitsFile))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	var l limits
	if err := json.Unmarshal(data, &l); err != nil {
		return fmt.Errorf("gvisor sandbox %q: %s: %w", s.cfg.ID, limitsFile, err)
	}
	if l.Containers != nil {
		s.limits = l.Containers
	}
	return nil
}

// setLimits bounds the sandbox's cgroup for the containers' resources
// ctrs, and keeps them once the cgroup took the bound. The caller holds
// s.limMu.
func (s *sandbox) setLimits(ctrs map[string]*specs.LinuxResources) error {
	memory, quota, shares := podBound(s.cfg.Resources, ctrs, s.b.cfg.MemoryOverhead)
	if err := s.boundCgroup(memory, quota, shares); err != nil {
		return err
	}
	data, err := json.Marshal(limits{Containers: ctrs})
	if err != nil {
		return err
	}
	if err := atomicfile.WriteFile(filepath.Join(s.cfg.Dir, limitsFile), data, 0o600); err != nil {
		return err
	}
	s.limits = ctrs
	return nil
}

// podResources is the root container's resources: the pod's, with the
// memory limit raised by the sentry's overhead.
func (s *sandbox) podResources() *specs.LinuxResources {
	r := s.cfg.Resources
	if r == nil || r.Memory == nil || r.Memory.Limit == nil || *r.Memory.Limit <= 0 {
		return r
	}
	out := *r
	mem := *r.Memory
	l := addSat(*r.Memory.Limit, s.b.cfg.MemoryOverhead)
	mem.Limit = &l
	out.Memory = &mem
	return &out
}

// boundCgroup writes the bound into the sandbox's host cgroup.
func (s *sandbox) boundCgroup(memory, quota int64, shares uint64) error {
	period := uint64(cpuPeriod)
	res := &specs.LinuxResources{
		Memory: &specs.LinuxMemory{Limit: &memory},
		CPU:    &specs.LinuxCPU{Quota: &quota, Period: &period},
	}
	if shares > 0 {
		res.CPU.Shares = &shares
	}
	var err error
	if cgroups.Mode() == cgroups.Unified {
		if memory < 0 {
			memory = math.MaxInt64 // "max"
		}
		if quota < 0 {
			quota = math.MaxInt64 // "max"
		}
		var m *cgroupsv2.Manager
		if m, err = cgroupsv2.Load(s.cgroupsPath()); err == nil {
			err = m.Update(cgroupsv2.ToResources(res))
		}
	} else {
		var cg cgroup1.Cgroup
		cg, err = cgroup1.Load(cgroup1.StaticPath(s.cgroupsPath()), cgroup1.WithHiearchy(cgpath.V1Hierarchy))
		if err == nil {
			err = cg.Update(res)
		}
	}
	if errors.Is(err, syscall.EBUSY) {
		return fmt.Errorf("gVisor sandbox %q uses more memory than the new bound of %d bytes: %v: %w", s.cfg.ID, memory, err, errdefs.ErrFailedPrecondition)
	}
	if err != nil {
		return fmt.Errorf("bound the cgroup of gVisor sandbox %q: %w", s.cfg.ID, err)
	}
	return nil
}

// addLimits takes a new container's resources into the sandbox's bound.
func (s *sandbox) addLimits(id string, res *specs.LinuxResources) error {
	s.limMu.Lock()
	defer s.limMu.Unlock()
	ctrs := maps.Clone(s.limits)
	if ctrs == nil {
		ctrs = map[string]*specs.LinuxResources{}
	}
	ctrs[id] = res
	return s.setLimits(ctrs)
}

// dropLimits forgets a removed container's resources (the cgroup keeps its
// bound until the next change).
func (s *sandbox) dropLimits(id string) {
	s.limMu.Lock()
	defer s.limMu.Unlock()
	if _, ok := s.limits[id]; !ok {
		return
	}
	ctrs := maps.Clone(s.limits)
	delete(ctrs, id)
	if data, err := json.Marshal(limits{Containers: ctrs}); err == nil && atomicfile.WriteFile(filepath.Join(s.cfg.Dir, limitsFile), data, 0o600) == nil {
		s.limits = ctrs
	}
}

// Update changes the container's resources: the sandbox's cgroup is bounded
// anew for all its containers, and the container sees its new limits in
// the sentry's cgroup file system.
func (c *container) Update(ctx context.Context, res *specs.LinuxResources) error {
	s := c.s
	s.limMu.Lock()
	ctrs := maps.Clone(s.limits)
	if ctrs == nil {
		ctrs = map[string]*specs.LinuxResources{}
	}
	ctrs[c.id] = mergeResources(ctrs[c.id], res)
	err := s.setLimits(ctrs)
	s.limMu.Unlock()
	if err != nil {
		return err
	}
	return c.showLimits(ctx, ctrs[c.id])
}

// showLimits writes the container's memory limit and CPU quota into its
// cgroup in the sentry (runsc write-control), where its programs read
// them. A container whose spec mounts no cgroup file system has none:
// nothing is written then.
func (c *container) showLimits(ctx context.Context, res *specs.LinuxResources) error {
	if res == nil || !c.cgroupfs {
		return nil
	}
	var writes [][3]string
	if res.Memory != nil && res.Memory.Limit != nil {
		l := *res.Memory.Limit
		if l <= 0 {
			l = math.MaxInt64
		}
		writes = append(writes, [3]string{"memory", "memory.limit_in_bytes", strconv.FormatInt(l, 10)})
	}
	if res.CPU != nil {
		if res.CPU.Period != nil && *res.CPU.Period > 0 {
			writes = append(writes, [3]string{"cpu", "cpu.cfs_period_us", strconv.FormatUint(*res.CPU.Period, 10)})
		}
		if res.CPU.Quota != nil {
			q := *res.CPU.Quota
			if q <= 0 {
				q = -1
			}
			writes = append(writes, [3]string{"cpu", "cpu.cfs_quota_us", strconv.FormatInt(q, 10)})
		}
		if res.CPU.Shares != nil && *res.CPU.Shares > 0 {
			writes = append(writes, [3]string{"cpu", "cpu.shares", strconv.FormatUint(*res.CPU.Shares, 10)})
		}
	}
	for _, w := range writes {
		wctx, cancel := context.WithTimeout(ctx, c.s.b.cfg.CommandTimeout)
		cmd := exec.CommandContext(wctx, c.s.b.cfg.Binary, append(globalArgs(c.rt), "write-control", c.id, w[0], "/"+c.id, w[1], w[2])...)
		_, err := pdeathsig.Output(cmd, syscall.SIGKILL)
		cancel()
		if err != nil {
			return fmt.Errorf("show %s of container %q in its sandbox: runsc write-control: %w: %s", w[1], c.id, err, exitStderr(err))
		}
	}
	return nil
}

// memoryLimit is the memory limit the container was given (0: none).
func (c *container) memoryLimit() int64 {
	c.s.limMu.Lock()
	defer c.s.limMu.Unlock()
	if r := c.s.limits[c.id]; r != nil && r.Memory != nil && r.Memory.Limit != nil && *r.Memory.Limit > 0 {
		return *r.Memory.Limit
	}
	return 0
}

// showStartLimits shows a started container the memory limit and CPU quota
// it was created with (when it has them: a container without runs no
// runsc command for it). A failure is logged: the container runs, bounded
// by the sandbox's cgroup all the same.
func (c *container) showStartLimits(ctx context.Context) {
	c.s.limMu.Lock()
	r := c.s.limits[c.id]
	c.s.limMu.Unlock()
	if r == nil {
		return
	}
	show := &specs.LinuxResources{}
	if r.Memory != nil && r.Memory.Limit != nil && *r.Memory.Limit > 0 {
		show.Memory = &specs.LinuxMemory{Limit: r.Memory.Limit}
	}
	if r.CPU != nil && r.CPU.Quota != nil && *r.CPU.Quota > 0 {
		show.CPU = &specs.LinuxCPU{Quota: r.CPU.Quota, Period: r.CPU.Period}
	}
	if show.Memory == nil && show.CPU == nil {
		return
	}
	if err := c.showLimits(ctx, show); err != nil && c.s.b.cfg.Log != nil {
		c.s.b.cfg.Log("gvisor: container limits not shown in the sandbox", "sandbox", c.s.cfg.ID, "container", c.id, "error", err)
	}
}

// mountsCgroupfs reports whether spec mounts a cgroup file system (CRI
// mounts one at /sys/fs/cgroup): the sentry then has one the container's
// programs read.
func mountsCgroupfs(spec *specs.Spec) bool {
	for _, m := range spec.Mounts {
		if m.Type == "cgroup" || m.Type == "cgroup2" {
			return true
		}
	}
	return false
}
