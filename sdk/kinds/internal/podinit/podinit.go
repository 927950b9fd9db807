// Package podinit is the init of a pod's shared PID namespace: the program
// re-executed as PID 1 of a new PID namespace (runc kind) or as the root
// container of a gVisor sandbox (gvisor kind), reaping orphans until it is
// killed.
package podinit

import (
	"os"
	"os/signal"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// Env marks a process started as a pod init: Env=1 in its environment.
const Env = "MAGNETAR_POD_INIT"

var hooked atomic.Bool

// Main runs the pod init and never returns when the process was started as
// one (PID 1, Env=1); otherwise it returns false at once. Either way it
// records that the program calls it, so that it can be re-executed as a
// pod init (see [Hooked]).
func Main() bool {
	hooked.Store(true)
	if os.Getenv(Env) != "1" || os.Getpid() != 1 {
		return false
	}
	run()
	return true
}

// Hooked reports whether the program called [Main].
func Hooked() bool { return hooked.Load() }

// run reaps every process that ends up a child and ignores every signal it
// can (the kernel ignores signals that a PID namespace's init has no
// handler for when they come from inside the namespace; the sandboxer ends
// it with SIGKILL).
func run() {
	os.Unsetenv(Env)
	_ = os.Chdir("/")
	sigc := make(chan os.Signal, 32)
	signal.Notify(sigc, unix.SIGCHLD)
	signal.Ignore(unix.SIGHUP, unix.SIGINT, unix.SIGTERM, unix.SIGQUIT, unix.SIGPIPE, unix.SIGUSR1, unix.SIGUSR2)
	for range sigc {
		for {
			var ws unix.WaitStatus
			pid, err := unix.Wait4(-1, &ws, unix.WNOHANG, nil)
			if pid <= 0 || err != nil {
				break
			}
		}
	}
}
