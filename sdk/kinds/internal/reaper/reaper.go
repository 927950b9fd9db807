// Package reaper collects the exits of known child processes through
// pidfds, for the kinds whose sandboxer is the child subreaper of the
// processes a runtime (runc, runsc) leaves behind.
//
// It reaps only the pids it is given, so other children of the process
// (started with os/exec) keep their exit statuses.
package reaper

import (
	"context"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/magnetar-io/magnetar/sdk/kinds/internal/exitcode"
	"github.com/magnetar-io/magnetar/sdk/kinds/internal/pidfd"
)

// Watch reaps pid, a child of this process, when it exits and calls
// exited with its exit code (128+signal when a signal killed it; 255 when
// it is gone already, or was reaped elsewhere, and its status cannot be
// known). The wait (see package pidfd) ends without a call when stop is
// closed; wg tracks its goroutine.
func Watch(stop <-chan struct{}, wg *sync.WaitGroup, pid int, exited func(code int)) {
	if pid <= 0 {
		return
	}
	fd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		// Gone already and reaped: nothing can tell its status any more.
		exited(exitcode.Unknown)
		return
	}
	wg.Go(func() {
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		go func() {
			select {
			case <-stop:
				cancel()
			case <-ctx.Done():
			}
		}()
		ex, err := pidfd.Wait(ctx, pid, fd)
		if err != nil {
			return // stopping: the process keeps running
		}
		code := exitcode.Unknown
		if ex.Child {
			code = int(exitcode.Of(ex.Status))
		}
		exited(code)
	})
}
