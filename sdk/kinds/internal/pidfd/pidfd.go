// Package pidfd waits for a process to exit through a pidfd in Go's
// poller, so that the wait also ends when its context does, and reaps the
// process when it is a child of this one. It is the one exit watch of the
// kinds: runc's processes, wasm's runners and the VM kind's QEMU.
package pidfd

import (
	"context"
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// Exit is how a watched process ended.
type Exit struct {
	// Child is true when the process was a child of this one: Wait reaped
	// it and Status is its wait status. Otherwise its parent reaps it and
	// the status is unknown here.
	Child  bool
	Status unix.WaitStatus
}

// Wait waits until the process pid, which the pidfd fd refers to, exits,
// or ctx ends, and reaps it if it is a child of this process. It takes fd
// over and closes it before returning. When ctx ends first it returns
// ctx's error and leaves the process alone.
func Wait(ctx context.Context, pid, fd int) (Exit, error) {
	return wait(ctx, pid, fd, true)
}

// WaitNoReap is [Wait] for a process that something else may reap (an
// os/exec Cmd's Wait): it never reaps, and Exit.Child stays false.
func WaitNoReap(ctx context.Context, pid, fd int) (Exit, error) {
	return wait(ctx, pid, fd, false)
}

func wait(ctx context.Context, pid, fd int, reap bool) (Exit, error) {
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return Exit{}, fmt.Errorf("pidfd of %d: %w", pid, err)
	}
	f := os.NewFile(uintptr(fd), fmt.Sprintf("pidfd:%d", pid))
	defer f.Close()
	rc, err := f.SyscallConn()
	if err != nil {
		return Exit{}, fmt.Errorf("pidfd of %d: %w", pid, err)
	}
	stop := context.AfterFunc(ctx, func() { f.Close() }) // ends the read below
	defer stop()
	var ex Exit
	exited := false
	err = rc.Read(func(fd uintptr) bool {
		// The pidfd is readable once the process exited.
		pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		if n, err := unix.Poll(pfd, 0); err != nil || n == 0 {
			return false
		}
		exited = true
		if reap {
			wpid, err := unix.Wait4(pid, &ex.Status, unix.WNOHANG, nil)
			ex.Child = err == nil && wpid == pid
		}
		return true
	})
	if exited {
		return ex, nil
	}
	if ctx.Err() != nil {
		return Exit{}, ctx.Err()
	}
	if err == nil {
		err = errors.New("the wait ended without an exit")
	}
	return Exit{}, fmt.Errorf("pidfd of %d: %w", pid, err)
}
