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
// as go-runc's StartLocked does.
package pdeathsig

import (
	"os/exec"
	"runtime"
	"syscall"
)

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
