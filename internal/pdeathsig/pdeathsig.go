//go:build linux

// Package pdeathsig runs commands that must die with the process that
// started them.
//
// Linux sends the parent-death signal (PR_SET_PDEATHSIG) when the *thread*
// that forked the child exits, not the process. A Go program's threads
// exit whenever a goroutine that locked its thread (runtime.LockOSThread,
// to unshare or enter a namespace) ends without unlocking it — as the runc
// kind does for every pod it creates. A child forked by an unlocked
// goroutine may have been forked from exactly such a thread: when that
// thread later exits, the kernel kills the child although the program
// lives (a `runsc wait` of a running container, killed so, made it look
// exited). The functions here keep the forking goroutine on its thread
// until the child has exited, so the signal comes only with the process,
// as go-runc's StartLocked does. Start and Fork, for children waited for
// elsewhere (daemons a test or a supervisor starts), fork from one thread
// kept for the process's whole life.
package pdeathsig

import (
	"os/exec"
	"runtime"
	"sync"
	"syscall"
)

var (
	keeperOnce sync.Once
	keeper     chan func()
)

// Fork runs fn, which starts processes, on a thread that never ends: a
// parent-death signal of what fn forks comes only when the process ends,
// however long the child runs and whoever waits for it.
func Fork(fn func() error) error {
	keeperOnce.Do(func() {
		keeper = make(chan func())
		go func() {
			// Never unlocked and never returns: the thread lives as
			// long as the process.
			runtime.LockOSThread()
			for f := range keeper {
				f()
			}
		}()
	})
	errc := make(chan error, 1)
	keeper <- func() { errc <- fn() }
	return <-errc
}

// Start starts cmd like cmd.Start, with sig as its parent-death signal,
// from Fork's thread; the caller waits for it as usual.
func Start(cmd *exec.Cmd, sig syscall.Signal) error {
	set(cmd, sig)
	return Fork(cmd.Start)
}

// Run runs cmd like cmd.Run, with sig as its parent-death signal.
func Run(cmd *exec.Cmd, sig syscall.Signal) error {
	set(cmd, sig)
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	return cmd.Run()
}

// Output runs cmd like cmd.Output, with sig as its parent-death signal.
func Output(cmd *exec.Cmd, sig syscall.Signal) ([]byte, error) {
	set(cmd, sig)
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	return cmd.Output()
}

func set(cmd *exec.Cmd, sig syscall.Signal) {
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Pdeathsig = sig
}
