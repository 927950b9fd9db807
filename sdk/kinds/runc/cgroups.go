package runc

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"github.com/containerd/cgroups/v3"
	"github.com/containerd/cgroups/v3/cgroup1"
	cgroupsv2 "github.com/containerd/cgroups/v3/cgroup2"
	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"

	"github.com/magnetar-io/magnetar/sdk/backend"
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

// oomWatch reports OOM kills in one container's memory cgroup.
type oomWatch struct {
	stop chan struct{}
	file *os.File // cgroup v1 eventfd; nil on v2
	once sync.Once
	// v2 (memory.events is polled): the file, the oom_kill count last
	// seen and the callback; check compares and reports.
	mu     sync.Mutex
	events string
	last   uint64
	onOOM  func()
}

// flush reports an OOM kill the poller has not seen yet (cgroup v2). It is
// called before the container's cgroup is removed: a process killed right
// before its container is deleted would otherwise go unreported.
func (w *oomWatch) flush() {
	if w == nil || w.events == "" {
		return
	}
	w.check()
}

func (w *oomWatch) check() {
	w.mu.Lock()
	n := oomKills(w.events)
	seen := n > w.last
	if n > w.last {
		w.last = n
	}
	w.mu.Unlock()
	if seen {
		w.onOOM()
	}
}

func (w *oomWatch) close() {
	if w == nil {
		return
	}
	w.once.Do(func() {
		close(w.stop)
		if w.file != nil {
			w.file.Close()
		}
	})
}

// watchOOM calls onOOM whenever the kernel OOM-kills a process in pid's
// memory cgroup, until the watch is closed. It returns nil when the cgroup
// cannot be watched (the container then reports no OOM events).
func (b *Backend) watchOOM(pid int, onOOM func()) *oomWatch {
	w := &oomWatch{stop: make(chan struct{})}
	if cgroups.Mode() == cgroups.Unified {
		path, err := cgroupsv2.PidGroupPath(pid)
		if err != nil {
			return nil
		}
		w.events = filepath.Join("/sys/fs/cgroup", path, "memory.events")
		w.last, w.onOOM = oomKills(w.events), onOOM
		b.wg.Go(func() { w.poll(b.life.Done()) })
		return w
	}
	cg, err := cgroup1.Load(cgpath.V1PidPath(pid), cgroup1.WithHiearchy(cgroup1.SingleSubsystem(cgpath.V1Hierarchy, cgroup1.Memory)))
	if err != nil {
		return nil
	}
	fd, err := cg.OOMEventFD()
	if err != nil {
		return nil
	}
	if err := unix.SetNonblock(int(fd), true); err != nil {
		unix.Close(int(fd))
		return nil
	}
	w.file = os.NewFile(fd, "oom-eventfd")
	b.wg.Go(func() {
		buf := make([]byte, 8)
		for {
			if _, err := w.file.Read(buf); err != nil {
				return // closed
			}
			// The eventfd also fires when the cgroup is removed.
			if cg.State() == cgroup1.Deleted {
				return
			}
			onOOM()
		}
	})
	b.wg.Go(func() { // close on backend stop too
		select {
		case <-b.life.Done():
			w.close()
		case <-w.stop:
		}
	})
	return w
}

// poll checks memory.events every second until the watch or the backend
// stops.
func (w *oomWatch) poll(bstop <-chan struct{}) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-w.stop:
			return
		case <-bstop:
			return
		case <-t.C:
		}
		w.check()
	}
}

func oomKills(path string) uint64 {
	data, err := os.ReadFile(path)
	if err != nil {
		return 0
	}
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		var k string
		var v string
		if n, _ := fmt.Sscan(sc.Text(), &k, &v); n == 2 && k == "oom_kill" {
			x, _ := strconv.ParseUint(v, 10, 64)
			return x
		}
	}
	return 0
}
