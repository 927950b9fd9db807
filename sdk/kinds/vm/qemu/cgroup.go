package qemu

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/containerd/cgroups/v3"
	"github.com/containerd/cgroups/v3/cgroup1"
	cgroupsv2 "github.com/containerd/cgroups/v3/cgroup2"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

const unifiedMountpoint = "/sys/fs/cgroup"

// placeInCgroup moves pid (all its threads) into the cgroup at path,
// creating it if needed. It returns a function that removes the cgroup if
// this call created it (to run after the process exited), or nil.
func placeInCgroup(path string, pid int) (remove func() error, err error) {
	if cgroups.Mode() == cgroups.Unified {
		created := false
		if _, err := os.Stat(filepath.Join(unifiedMountpoint, path)); errors.Is(err, os.ErrNotExist) {
			created = true
		}
		m, err := cgroupsv2.NewManager(unifiedMountpoint, path, &cgroupsv2.Resources{})
		if err != nil {
			return nil, fmt.Errorf("cgroup %s: %w", path, err)
		}
		if err := m.AddProc(uint64(pid)); err != nil {
			return rmIf(created, path), fmt.Errorf("cgroup %s: add pid %d: %w", path, pid, err)
		}
		return rmIf(created, path), nil
	}
	// Legacy or hybrid (cgroup v1 controllers; the v2 tree of a hybrid
	// host holds no useful controller and is left alone).
	created := false
	cg, err := cgroup1.Load(cgroup1.StaticPath(path))
	if err != nil {
		cg, err = cgroup1.New(cgroup1.StaticPath(path), &specs.LinuxResources{})
		if err != nil {
			return nil, fmt.Errorf("cgroup %s: %w", path, err)
		}
		created = true
	}
	if err := cg.AddProc(uint64(pid)); err != nil {
		return rmIf(created, path), fmt.Errorf("cgroup %s: add pid %d: %w", path, pid, err)
	}
	return rmIf(created, path), nil
}

func rmIf(created bool, path string) func() error {
	if !created {
		return nil
	}
	return cgroupRemover(path)
}

// cgroupRemover returns a function that removes the cgroup at path if it
// still exists. It retries for a moment: right after the last process
// exited the kernel may still refuse (EBUSY), and another remover (the
// watcher of an earlier run's VM object) may be removing it at the same
// time.
func cgroupRemover(path string) func() error {
	return func() error {
		var err error
		for range 20 {
			if err = removeCgroup(path); err == nil {
				return nil
			}
			time.Sleep(50 * time.Millisecond)
		}
		return err
	}
}

// removeCgroup removes the cgroup at path, if it exists, in every
// hierarchy.
func removeCgroup(path string) error {
	if cgroups.Mode() == cgroups.Unified {
		if _, err := os.Stat(filepath.Join(unifiedMountpoint, path)); errors.Is(err, os.ErrNotExist) {
			return nil
		}
		m, err := cgroupsv2.Load(path, cgroupsv2.WithMountpoint(unifiedMountpoint))
		if err != nil {
			return fmt.Errorf("cgroup %s: %w", path, err)
		}
		return m.Delete()
	}
	cg, err := cgroup1.Load(cgroup1.StaticPath(path))
	if errors.Is(err, cgroup1.ErrCgroupDeleted) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("cgroup %s: %w", path, err)
	}
	return cg.Delete()
}
