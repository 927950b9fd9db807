package gvisor

import (
	"fmt"
	"os"
	"sync"

	"golang.org/x/sys/unix"
)

// watchExit calls exited once pid has exited, reaping it when it is a
// child of this process (after a restart it is not). The wait goes
// through a pidfd in Go's poller and ends without a call when stop is
// closed.
func watchExit(stop <-chan struct{}, wg *sync.WaitGroup, pid int, exited func()) {
	fd, err := unix.PidfdOpen(pid, unix.PIDFD_NONBLOCK)
	if err != nil {
		exited() // gone already
		return
	}
	f := os.NewFile(uintptr(fd), fmt.Sprintf("pidfd:%d", pid))
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return
	}
	done := make(chan struct{})
	wg.Go(func() {
		select {
		case <-stop:
			f.Close()
		case <-done:
		}
	})
	wg.Go(func() {
		defer close(done)
		defer f.Close()
		gone := false
		err := rc.Read(func(fd uintptr) bool {
			fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
			if n, _ := unix.Poll(fds, 0); n <= 0 {
				return false
			}
			var ws unix.WaitStatus
			_, _ = unix.Wait4(pid, &ws, unix.WNOHANG, nil) // ECHILD when not ours
			gone = true
			return true
		})
		if err == nil && gone {
			exited()
		}
	})
}
