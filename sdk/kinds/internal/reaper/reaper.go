// Package reaper collects the exits of known child processes through
// pidfds, for the kinds whose sandboxer is the child subreaper of the
// processes a runtime (runc, runsc) leaves behind.
//
// It reaps only the pids it is given, so other children of the process
// (started with os/exec) keep their exit statuses.
package reaper

import (
	"fmt"
	"os"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/magnetar-io/magnetar/sdk/kinds/internal/exitcode"
)

// Watch reaps pid, a child of this process, when it exits and calls
// exited with its exit code (128+signal when a signal killed it; 255 when
// it is gone already and its status cannot be known). The wait goes
// through a pidfd in Go's poller: it ends without a call when stop is
// closed, and wg tracks its goroutines.
func Watch(stop <-chan struct{}, wg *sync.WaitGroup, pid int, exited func(code int)) {
	if pid <= 0 {
		return
	}
	fd, err := unix.PidfdOpen(pid, unix.PIDFD_NONBLOCK)
	if err != nil {
		// Gone already and reaped: nothing can tell its status any more.
		exited(exitcode.Unknown)
		return
	}
	f := os.NewFile(uintptr(fd), fmt.Sprintf("pidfd:%d", pid))
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		exited(exitcode.Unknown)
		return
	}
	done := make(chan struct{})
	wg.Go(func() { // unblock the wait on stop
		select {
		case <-stop:
			f.Close()
		case <-done:
		}
	})
	wg.Go(func() {
		defer close(done)
		defer f.Close()
		var ws unix.WaitStatus
		reaped := false
		err := rc.Read(func(uintptr) bool {
			// The pidfd is readable once the process exited.
			wpid, err := unix.Wait4(pid, &ws, unix.WNOHANG, nil)
			reaped = wpid == pid || err != nil
			return reaped
		})
		if err != nil || !reaped {
			return // stopping: the process keeps running
		}
		exited(int(exitcode.Of(ws)))
	})
}
