package wasm

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/magnetar-io/magnetar/sdk/kinds/internal/cgpath"

	"github.com/containerd/cgroups/v3"
	"github.com/containerd/cgroups/v3/cgroup1"
	cgroupsv2 "github.com/containerd/cgroups/v3/cgroup2"
	"github.com/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/magnetar-io/magnetar/sdk/backend"
	"github.com/magnetar-io/magnetar/sdk/kinds/internal/cgstats"
)

const unifiedMountpoint = "/sys/fs/cgroup"

// cgroup is a container's cgroup, v1 or v2.
type cgroup struct {
	path string
	v1   cgroup1.Cgroup
	v2   *cgroupsv2.Manager
}

// cgroupResources keeps the parts of res that a runner's cgroup applies.
func cgroupResources(res *specs.LinuxResources, memLimit uint64) *specs.LinuxResources {
	out := &specs.LinuxResources{}
	if res != nil {
		out.CPU = res.CPU
		out.Pids = res.Pids
	}
	if memLimit > 0 {
		l := int64(memLimit)
		out.Memory = &specs.LinuxMemory{Limit: &l}
	}
	return out
}

// newCgroup creates (or opens) the cgroup at path with res applied.
func newCgroup(p string, res *specs.LinuxResources) (*cgroup, error) {
	if cgroups.Mode() == cgroups.Unified {
		m, err := cgroupsv2.NewManager(unifiedMountpoint, p, cgroupsv2.ToResources(res))
		if err != nil {
			return nil, fmt.Errorf("create cgroup %s: %w", p, err)
		}
		return &cgroup{path: p, v2: m}, nil
	}
	cg, err := cgroup1.New(cgroup1.StaticPath(p), res)
	if err != nil {
		return nil, fmt.Errorf("create cgroup %s: %w", p, err)
	}
	return &cgroup{path: p, v1: cg}, nil
}

// loadCgroup opens the existing cgroup at path.
func loadCgroup(p string) (*cgroup, error) {
	if cgroups.Mode() == cgroups.Unified {
		m, err := cgroupsv2.Load(p)
		if err != nil {
			return nil, fmt.Errorf("load cgroup %s: %v: %w", p, err, errdefs.ErrNotFound)
		}
		return &cgroup{path: p, v2: m}, nil
	}
	cg, err := cgroup1.Load(cgroup1.StaticPath(p))
	if err != nil {
		return nil, fmt.Errorf("load cgroup %s: %v: %w", p, err, errdefs.ErrNotFound)
	}
	return &cgroup{path: p, v1: cg}, nil
}

func (c *cgroup) add(pid int) error {
	var err error
	if c.v2 != nil {
		err = c.v2.AddProc(uint64(pid))
	} else {
		err = c.v1.AddProc(uint64(pid))
	}
	if err != nil {
		return fmt.Errorf("move runner %d into cgroup %s: %w", pid, c.path, err)
	}
	return nil
}

func (c *cgroup) update(res *specs.LinuxResources) error {
	if c.v2 != nil {
		return c.v2.Update(cgroupsv2.ToResources(res))
	}
	return c.v1.Update(res)
}

func (c *cgroup) freeze() error {
	if c.v2 != nil {
		return c.v2.Freeze()
	}
	return c.v1.Freeze()
}

func (c *cgroup) thaw() error {
	if c.v2 != nil {
		return c.v2.Thaw()
	}
	return c.v1.Thaw()
}

// delete removes the cgroup, retrying while the kernel still counts the
// runner that was just reaped.
func (c *cgroup) delete(ctx context.Context) error {
	var err error
	for range 50 {
		if c.v2 != nil {
			err = c.v2.Delete()
		} else {
			err = c.v1.Delete()
		}
		if err == nil || errors.Is(err, os.ErrNotExist) || errors.Is(err, cgroup1.ErrCgroupDeleted) {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
	return fmt.Errorf("delete cgroup %s: %w", c.path, err)
}

// deleteCgroup removes the (empty) cgroup at p if it exists.
func deleteCgroup(ctx context.Context, p string) error {
	c, err := loadCgroup(p)
	if err != nil {
		return nil // gone
	}
	return c.delete(ctx)
}

// memoryFile is the path of a file of the cgroup's memory controller.
func (c *cgroup) memoryFile(name string) string {
	if c.v2 != nil {
		return filepath.Join(unifiedMountpoint, c.path, name)
	}
	subs, err := cgroup1.Default()
	if err != nil {
		return ""
	}
	for _, s := range subs {
		if s.Name() != cgroup1.Memory {
			continue
		}
		if p, ok := s.(interface{ Path(string) string }); ok {
			return filepath.Join(p.Path(c.path), name)
		}
	}
	return ""
}

// oomKills is the number of OOM kills in the cgroup so far.
func (c *cgroup) oomKills() uint64 {
	name := "memory.oom_control"
	if c.v2 != nil {
		name = "memory.events"
	}
	f := c.memoryFile(name)
	if f == "" {
		return 0
	}
	data, err := os.ReadFile(f)
	if err != nil {
		return 0
	}
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), " ")
		if ok && k == "oom_kill" {
			n, _ := strconv.ParseUint(strings.TrimSpace(v), 10, 64)
			return n
		}
	}
	return 0
}

// stats reads the cgroup's usage.
func (c *cgroup) stats() (*backend.Stats, error) {
	now := time.Now().UTC()
	if c.v2 != nil {
		st, err := c.v2.Stat()
		if err != nil {
			return nil, fmt.Errorf("cgroup stats: %w", err)
		}
		return cgstats.FromV2(st, now), nil
	}
	st, err := c.v1.Stat(cgroup1.IgnoreNotExist)
	if err != nil {
		return nil, fmt.Errorf("cgroup stats: %w", err)
	}
	return cgstats.FromV1(st, now), nil
}

// cgroupPath turns a spec's cgroupsPath into a cgroupfs path: a path as
// is ("/k8s.io/<id>", relative ones under "/"), systemd's
// "slice:prefix:name" as the path systemd would use
// ("/a.slice/a-b.slice/prefix-name.scope").
func cgroupPath(specPath, fallback string) (string, error) {
	if specPath == "" {
		return fallback, nil
	}
	if parts := strings.Split(specPath, ":"); len(parts) == 3 && !strings.Contains(specPath, "/") {
		slice, err := cgpath.ExpandSlice(parts[0])
		if err != nil {
			return "", err
		}
		name := parts[2]
		if parts[1] != "" {
			name = parts[1] + "-" + name
		}
		if !strings.HasSuffix(name, ".slice") {
			name += ".scope"
		}
		return path.Join(slice, name), nil
	}
	if strings.Contains(specPath, ":") {
		return "", fmt.Errorf("cgroups path %q: %w", specPath, errdefs.ErrInvalidArgument)
	}
	p := path.Clean("/" + specPath)
	if p == "/" {
		return "", fmt.Errorf("cgroups path %q is the root cgroup: %w", specPath, errdefs.ErrInvalidArgument)
	}
	return p, nil
}
