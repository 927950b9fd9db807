package vm

import (
	"fmt"
	"path"
	"runtime"
	"strings"

	"github.com/magnetar-io/magnetar/sdk/kinds/internal/cgpath"

	"github.com/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// Sizing defaults (see [Config]).
const (
	// DefaultMemoryOverheadMiB is added to a sandbox's memory limit for
	// the guest kernel, the agent and the in-guest runtime.
	DefaultMemoryOverheadMiB = 128
	// defaultCPUPeriod is the CFS period when a quota comes without one.
	defaultCPUPeriod = 100000
	mib              = 1 << 20
)

// vmSize is the size of one VM.
type vmSize struct {
	VCPUs     int
	MemoryMiB int
}

// size returns the VM size for a sandbox's resources (CRI's
// LinuxPodSandboxConfig.resources, the sum of its containers' resources):
// vCPUs from the CPU quota/period, rounded up; memory from the memory
// limit plus MemoryOverheadMiB. What res does not set takes the configured
// defaults (VCPUs, MemoryMiB; 0 leaves the driver's). vCPUs never exceed
// MaxVCPUs (default: the host's CPUs).
func (c Config) size(res *specs.LinuxResources) vmSize {
	sz := vmSize{VCPUs: c.VCPUs, MemoryMiB: c.MemoryMiB}
	if res != nil && res.CPU != nil && res.CPU.Quota != nil && *res.CPU.Quota > 0 {
		period := uint64(defaultCPUPeriod)
		if res.CPU.Period != nil && *res.CPU.Period > 0 {
			period = *res.CPU.Period
		}
		q := uint64(*res.CPU.Quota)
		sz.VCPUs = int((q + period - 1) / period)
	}
	if res != nil && res.Memory != nil && res.Memory.Limit != nil && *res.Memory.Limit > 0 {
		overhead := c.MemoryOverheadMiB
		if overhead <= 0 {
			overhead = DefaultMemoryOverheadMiB
		}
		sz.MemoryMiB = int((*res.Memory.Limit+mib-1)/mib) + overhead
	}
	maxCPUs := c.MaxVCPUs
	if maxCPUs <= 0 {
		maxCPUs = runtime.NumCPU()
	}
	if sz.VCPUs > maxCPUs {
		sz.VCPUs = maxCPUs
	}
	return sz
}

// cgroupName is the name of the cgroup QEMU runs in, below the pod's
// cgroup parent.
func cgroupName(id string) string { return "magnetar-vm-" + id }

// vmCgroupPath returns the cgroup (path from the hierarchy root) of a
// sandbox's VMM: a child of the pod's cgroup parent. The parent is a
// cgroupfs path ("/kubepods/burstable/pod<uid>"), a systemd slice
// ("kubepods-burstable-pod<uid>.slice", expanded as systemd lays it out),
// or systemd's "slice:prefix:name" naming the pod's own unit. An empty
// parent puts the VMM under "/magnetar".
func vmCgroupPath(parent, id string) (string, error) {
	if id == "" || strings.ContainsAny(id, "/:") || id == "." || id == ".." {
		return "", fmt.Errorf("sandbox id %q cannot name a cgroup: %w", id, errdefs.ErrInvalidArgument)
	}
	switch {
	case parent == "":
		return path.Join("/magnetar", cgroupName(id)), nil
	case strings.Contains(parent, ":"):
		parts := strings.Split(parent, ":")
		if len(parts) != 3 || strings.Contains(parent, "/") {
			return "", fmt.Errorf("cgroup parent %q: %w", parent, errdefs.ErrInvalidArgument)
		}
		slice, err := cgpath.ExpandSlice(parts[0])
		if err != nil {
			return "", err
		}
		name := parts[2]
		if name == "" {
			return "", fmt.Errorf("cgroup parent %q: no unit name: %w", parent, errdefs.ErrInvalidArgument)
		}
		if parts[1] != "" {
			name = parts[1] + "-" + name
		}
		if !strings.HasSuffix(name, ".slice") {
			name += ".scope"
		}
		return path.Join(slice, name, cgroupName(id)), nil
	case strings.HasSuffix(parent, ".slice") && !strings.Contains(parent, "/"):
		slice, err := cgpath.ExpandSlice(parent)
		if err != nil {
			return "", err
		}
		return path.Join(slice, cgroupName(id)+".scope"), nil
	}
	for _, c := range strings.Split(parent, "/") {
		if c == ".." {
			return "", fmt.Errorf("cgroup parent %q: %w", parent, errdefs.ErrInvalidArgument)
		}
	}
	return path.Join("/", parent, cgroupName(id)), nil
}
