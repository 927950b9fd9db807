// Package cgoom reports OOM kills in a memory cgroup: an eventfd on cgroup
// v1 (memory.oom_control), memory.events polled every second on v2. The
// runc kind watches each container's cgroup; the gvisor kind watches its
// sandbox's, where the host kernel's OOM killer ends the sentry.
package cgoom

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
	"golang.org/x/sys/unix"

	"github.com/magnetar-io/magnetar/sdk/kinds/internal/cgpath"
)

// Watch reports OOM kills in one memory cgroup.
type Watch struct {
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

// Flush reports an OOM kill the poller has not seen yet (cgroup v2). It is
// called before the cgroup is removed: a process killed right before its
// container is deleted would otherwise go unreported. A nil Watch does
// nothing.
func (w *Watch) Flush() {
	if w == nil || w.events == "" {
		return
	}
	w.check()
}

func (w *Watch) check() {
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

// Close ends the watch. A nil Watch does nothing.
func (w *Watch) Close() {
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

// Pid calls onOOM whenever the kernel OOM-kills a process in pid's memory
// cgroup, until the watch is closed or life is done; its goroutines are
// counted in wg. It returns nil when the cgroup cannot be watched (no OOM
// events are then reported).
func Pid(life <-chan struct{}, wg *sync.WaitGroup, pid int, onOOM func()) *Watch {
	w := &Watch{stop: make(chan struct{})}
	if cgroups.Mode() == cgroups.Unified {
		path, err := cgroupsv2.PidGroupPath(pid)
		if err != nil {
			return nil
		}
		w.events = filepath.Join("/sys/fs/cgroup", path, "memory.events")
		w.last, w.onOOM = oomKills(w.events), onOOM
		wg.Go(func() { w.poll(life) })
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
	wg.Go(func() {
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
	wg.Go(func() { // close when life ends too
		select {
		case <-life:
			w.Close()
		case <-w.stop:
		}
	})
	return w
}

// poll checks memory.events every second until the watch or life ends.
func (w *Watch) poll(life <-chan struct{}) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-w.stop:
			return
		case <-life:
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
