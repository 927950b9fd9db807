package supervisor

import (
	"os"
	"os/signal"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// maxExits bounds the exit statuses the reaper keeps for the worker.
const maxExits = 4096

// exit is how a child of the supervisor ended.
type exit struct {
	// Code is the exit code, 128+signal for a signal.
	Code int
	At   time.Time
}

// reaper reaps every child of the supervisor: the worker, and the
// processes orphaned by a worker that died (the supervisor is a child
// subreaper, so they become its children). It keeps the orphans' exit
// statuses until the worker asks for them.
type reaper struct {
	mu    sync.Mutex
	cond  *sync.Cond
	exits map[int]exit
	order []int // pids of exits, oldest first

	workerPid  int
	workerExit chan exit
	stop       chan struct{}
	done       chan struct{}
}

func newReaper() *reaper {
	r := &reaper{exits: map[int]exit{}, stop: make(chan struct{}), done: make(chan struct{})}
	r.cond = sync.NewCond(&r.mu)
	sigc := make(chan os.Signal, 64)
	signal.Notify(sigc, unix.SIGCHLD)
	go func() {
		defer close(r.done)
		defer signal.Stop(sigc)
		for {
			r.reap()
			select {
			case <-sigc:
			case <-r.stop:
				return
			}
		}
	}()
	return r
}

// watch makes the reaper report pid's exit on the returned channel: the
// worker's.
func (r *reaper) watch(pid int) <-chan exit {
	ch := make(chan exit, 1)
	r.mu.Lock()
	r.workerPid, r.workerExit = pid, ch
	// It may have exited before the reaper knew it as the worker.
	if e, ok := r.exits[pid]; ok {
		delete(r.exits, pid)
		ch <- e
	}
	r.mu.Unlock()
	return ch
}

func (r *reaper) reap() {
	// The lock is held from wait4 to the record, so that exitOf never
	// sees a pid that is neither a zombie nor recorded.
	r.mu.Lock()
	defer r.mu.Unlock()
	for {
		var ws unix.WaitStatus
		pid, err := unix.Wait4(-1, &ws, unix.WNOHANG, nil)
		if pid <= 0 || err != nil {
			return
		}
		e := exit{Code: exitCode(ws), At: time.Now().UTC()}
		if pid == r.workerPid && r.workerExit != nil {
			r.workerExit <- e
			r.workerPid, r.workerExit = 0, nil
		} else {
			if _, ok := r.exits[pid]; !ok {
				r.order = append(r.order, pid)
			}
			r.exits[pid] = e
			for len(r.order) > maxExits {
				delete(r.exits, r.order[0])
				r.order = r.order[1:]
			}
			r.cond.Broadcast()
		}
	}
}

// exitOf returns the exit status of pid, an orphan the supervisor reaped.
// If pid is a zombie child of the supervisor that has not been reaped yet,
// it waits for it (up to wait). ok is false when the supervisor knows
// nothing of pid's exit.
func (r *reaper) exitOf(pid int, wait time.Duration) (exit, bool) {
	deadline := time.Now().Add(wait)
	r.mu.Lock()
	defer r.mu.Unlock()
	for {
		if e, ok := r.exits[pid]; ok {
			return e, true
		}
		if !isZombieChild(pid) || time.Now().After(deadline) {
			return exit{}, false
		}
		// SIGCHLD for it is on its way: the reap broadcasts.
		t := time.AfterFunc(time.Until(deadline), r.cond.Broadcast)
		r.cond.Wait()
		t.Stop()
	}
}

// isZombieChild reports whether pid is a child of this process that has
// exited and waits to be reaped.
func isZombieChild(pid int) bool {
	var info unix.Siginfo
	err := unix.Waitid(unix.P_PID, pid, &info, unix.WEXITED|unix.WNOHANG|unix.WNOWAIT, nil)
	return err == nil && info.Signo == int32(unix.SIGCHLD)
}

// records returns the exit statuses kept, oldest first (for a handover).
func (r *reaper) records() []exitRecord {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]exitRecord, 0, len(r.order))
	for _, pid := range r.order {
		e := r.exits[pid]
		out = append(out, exitRecord{Pid: pid, Code: e.Code, At: e.At})
	}
	return out
}

// restore adds exit statuses handed over by a previous supervisor.
func (r *reaper) restore(recs []exitRecord) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, x := range recs {
		if _, ok := r.exits[x.Pid]; ok {
			continue // reaped here since: newer
		}
		r.order = append(r.order, x.Pid)
		r.exits[x.Pid] = exit{Code: x.Code, At: x.At}
	}
	for len(r.order) > maxExits {
		delete(r.exits, r.order[0])
		r.order = r.order[1:]
	}
	r.cond.Broadcast()
}

func (r *reaper) close() {
	close(r.stop)
	<-r.done
}

// exitCode is a wait status as containerd reports it: the exit code, or
// 128+signal.
func exitCode(ws unix.WaitStatus) int {
	if ws.Signaled() {
		return 128 + int(ws.Signal())
	}
	return ws.ExitStatus()
}
