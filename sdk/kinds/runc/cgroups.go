package runc

import (
	"fmt"
	"time"

	"github.com/containerd/cgroups/v3"
	"github.com/containerd/cgroups/v3/cgroup1"
	cgroupsv2 "github.com/containerd/cgroups/v3/cgroup2"
	"github.com/containerd/errdefs"

	"github.com/magnetar-io/magnetar/sdk/backend"
	"github.com/magnetar-io/magnetar/sdk/kinds/internal/cgoom"
	"github.com/magnetar-io/magnetar/sdk/kinds/internal/cgpath"
	"github.com/magnetar-io/magnetar/sdk/kinds/internal/cgstats"
)

// loadCgroup opens the cgroup pid lives in: a cgroup1.Cgroup or a
// *cgroupsv2.Manager. It stays usable after the process exits, until the
// container is deleted, which is when CRI reads it to tell OOM kills.
func loadCgroup(pid int) (any, error) {
	if pid <= 0 {
		return nil, fmt.Errorf("container has no process: %w", errdefs.ErrNotFound)
	}
	if cgroups.Mode() == cgroups.Unified {
		path, err := cgroupsv2.PidGroupPath(pid)
		if err != nil {
			return nil, fmt.Errorf("find cgroup of pid %d: %v: %w", pid, err, errdefs.ErrNotFound)
		}
		return cgroupsv2.Load(path)
	}
	cg, err := cgroup1.Load(cgpath.V1PidPath(pid), cgroup1.WithHiearchy(cgpath.V1Hierarchy))
	if err != nil {
		return nil, fmt.Errorf("load cgroup of pid %d: %v: %w", pid, err, errdefs.ErrNotFound)
	}
	return cg, nil
}

// cgroupStats reads the usage of a cgroup opened by loadCgroup.
func cgroupStats(cgx any) (*backend.Stats, error) {
	now := time.Now().UTC()
	switch cg := cgx.(type) {
	case *cgroupsv2.Manager:
		st, err := cg.Stat()
		if err != nil {
			return nil, err
		}
		return cgstats.FromV2(st, now), nil
	case cgroup1.Cgroup:
		st, err := cg.Stat(cgroup1.IgnoreNotExist)
		if err != nil {
			return nil, err
		}
		return cgstats.FromV1(st, now), nil
	}
	return nil, fmt.Errorf("container has no cgroup: %w", errdefs.ErrNotFound)
}

// watchOOM calls onOOM whenever the kernel OOM-kills a process in pid's
// memory cgroup, until the watch is closed (nil: the cgroup cannot be
// watched, the container reports no OOM events).
func (b *Backend) watchOOM(pid int, onOOM func()) *cgoom.Watch {
	return cgoom.Pid(b.life.Done(), &b.wg, pid, onOOM)
}
