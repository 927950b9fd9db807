package agent

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// Reaper collects the exit statuses of orphans: as PID 1 every orphaned
// process in the guest becomes the agent's child. It reaps only zombie
// children that nobody else waits for, so os/exec and pidfd waiters keep
// their statuses:
//
//   - pids registered as owned (Start, or OwnLocked under Lock) are never
//     reaped;
//   - other zombie children are reaped only once they have stayed zombies
//     for the grace period. Code that waits for its children (os/exec's
//     Wait, go-runc, the runc backend's pidfd waiters) collects them as
//     soon as they exit, so a zombie that lingers is an orphan nobody
//     waits for. Code that starts a process and calls Wait only much later
//     must register it.
type Reaper struct {
	procDir string
	grace   time.Duration

	mu    sync.Mutex
	owned map[int]struct{}
	seen  map[int]time.Time // zombie pid → when first seen
	self  int
}

// DefaultReapGrace is how long an unowned zombie is left to its waiter.
const DefaultReapGrace = 2 * time.Second

// NewReaper returns a reaper that scans procDir (normally /proc) and
// leaves unowned zombies alone for grace.
func NewReaper(procDir string, grace time.Duration) *Reaper {
	return &Reaper{procDir: procDir, grace: grace, owned: map[int]struct{}{}, seen: map[int]time.Time{}, self: os.Getpid()}
}

// Lock stops the reaper from scanning, so that a process can be started
// and its pid registered with OwnLocked before it could be mistaken for an
// orphan.
func (r *Reaper) Lock() { r.mu.Lock() }

// Unlock undoes Lock.
func (r *Reaper) Unlock() { r.mu.Unlock() }

// OwnLocked marks pid as waited for by someone else. The caller holds Lock.
func (r *Reaper) OwnLocked(pid int) { r.owned[pid] = struct{}{} }

// Release forgets pid once its owner has waited for it.
func (r *Reaper) Release(pid int) {
	r.mu.Lock()
	delete(r.owned, pid)
	r.mu.Unlock()
}

// Start starts cmd and marks its process as owned; the caller waits for it
// with cmd.Wait and then calls Release(cmd.Process.Pid).
func (r *Reaper) Start(cmd *exec.Cmd) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if err := cmd.Start(); err != nil {
		return err
	}
	r.owned[cmd.Process.Pid] = struct{}{}
	return nil
}

// Run reaps unowned zombies on every SIGCHLD (and every few seconds, in
// case signals coalesce) until ctx is done.
func (r *Reaper) Run(ctx context.Context) {
	ch := make(chan os.Signal, 16)
	signal.Notify(ch, unix.SIGCHLD)
	defer signal.Stop(ch)
	t := time.NewTicker(max(r.grace/2, 100*time.Millisecond))
	defer t.Stop()
	for {
		r.ReapOnce()
		select {
		case <-ctx.Done():
			return
		case <-ch:
		case <-t.C:
		}
	}
}

// ReapOnce reaps the unowned zombie children that have been zombies for
// the grace period and returns their pids.
func (r *Reaper) ReapOnce() []int {
	r.mu.Lock()
	defer r.mu.Unlock()
	zs, err := zombieChildren(r.procDir, r.self)
	if err != nil {
		return nil
	}
	now := time.Now()
	current := make(map[int]time.Time, len(zs))
	for _, pid := range zs {
		first, ok := r.seen[pid]
		if !ok {
			first = now
		}
		current[pid] = first
	}
	r.seen = current // forget zombies someone else reaped
	var reaped []int
	for _, pid := range zs {
		if _, ok := r.owned[pid]; ok || now.Sub(current[pid]) < r.grace {
			continue
		}
		delete(r.seen, pid)
		var ws unix.WaitStatus
		if wpid, err := unix.Wait4(pid, &ws, unix.WNOHANG, nil); err == nil && wpid == pid {
			reaped = append(reaped, pid)
		}
	}
	return reaped
}

// zombieChildren lists the pids in procDir whose parent is ppid and whose
// state is Z.
func zombieChildren(procDir string, ppid int) ([]int, error) {
	ents, err := os.ReadDir(procDir)
	if err != nil {
		return nil, err
	}
	var out []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join(procDir, e.Name(), "stat"))
		if err != nil {
			continue // exited and reaped meanwhile
		}
		state, parent, err := parseStat(string(b))
		if err != nil {
			continue
		}
		if state == "Z" && parent == ppid {
			out = append(out, pid)
		}
	}
	return out, nil
}

// parseStat returns the state and parent pid from /proc/<pid>/stat. The
// command name is in parentheses and may contain any character, so fields
// are counted from the last ')'.
func parseStat(s string) (state string, ppid int, err error) {
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return "", 0, errors.New("stat: no command name")
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 2 {
		return "", 0, fmt.Errorf("stat: short line %q", s)
	}
	ppid, err = strconv.Atoi(f[1])
	if err != nil {
		return "", 0, fmt.Errorf("stat: ppid: %w", err)
	}
	return f[0], ppid, nil
}
