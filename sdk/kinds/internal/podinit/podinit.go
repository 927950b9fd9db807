// Package podinit is the init of a pod's shared PID namespace: the program
// re-executed as PID 1 of a new PID namespace (runc kind) or as the root
// container of a gVisor sandbox (gvisor kind), reaping orphans until it is
// killed.
package podinit

import (
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"sync/atomic"

	"github.com/magnetar-io/magnetar/sdk/kinds/internal/seccompexec"
	"golang.org/x/sys/unix"
)

// Env marks a process started as a pod init: Env=1 in its environment.
const Env = "MAGNETAR_POD_INIT"

// SysctlEnv marks a process started to set sysctls (SysctlEnv=1): its
// arguments are pairs of a path below /proc/sys and a value. It writes
// each, reads it back, and exits 0, or SysctlUnsupported when the kernel
// it runs on has no such sysctl or refuses the write or the value (the
// gvisor kind runs it with `runsc exec` in a sandbox's root container),
// or 1 on another error, with the reason on stderr.
const SysctlEnv = "MAGNETAR_POD_SYSCTL"

// SysctlUnsupported is the exit status of a sysctl process for a sysctl
// the kernel does not let be set.
const SysctlUnsupported = 3

var hooked atomic.Bool

// Main runs the pod init and never returns when the process was started as
// one (PID 1, Env=1); otherwise it returns false at once. Either way it
// records that the program calls it, so that it can be re-executed as a
// pod init (see [Hooked]).
func Main() bool {
	hooked.Store(true)
	// The same executable, bound into a gVisor container, starts its
	// exec'd processes under the container's seccomp profile.
	if seccompexec.Main() {
		return true
	}
	if os.Getenv(SysctlEnv) == "1" {
		os.Exit(SetSysctls("/proc/sys", os.Args[1:], os.Stderr))
	}
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

// SetSysctls writes args, pairs of a path below root and a value, and
// checks that each reads back as written (whitespace aside); it returns
// the exit status described at [SysctlEnv], reasons written to errw.
func SetSysctls(root string, args []string, errw io.Writer) int {
	if len(args)%2 != 0 {
		fmt.Fprintln(errw, "sysctl: arguments are not pairs of a path and a value")
		return 1
	}
	for i := 0; i < len(args); i += 2 {
		rel, val := args[i], args[i+1]
		if !filepath.IsLocal(rel) {
			fmt.Fprintf(errw, "sysctl %s: not a path below /proc/sys\n", rel)
			return 1
		}
		p := filepath.Join(root, rel)
		if _, err := os.Stat(p); err != nil {
			fmt.Fprintf(errw, "sysctl %s: this kernel has no such sysctl (%v)\n", rel, err)
			return SysctlUnsupported
		}
		if err := os.WriteFile(p, []byte(val), 0); err != nil {
			fmt.Fprintf(errw, "sysctl %s=%q: this kernel does not let it be set: %v\n", rel, val, err)
			return SysctlUnsupported
		}
		got, err := os.ReadFile(p)
		if err != nil {
			fmt.Fprintf(errw, "sysctl %s: read back: %v\n", rel, err)
			return 1
		}
		if strings.Join(strings.Fields(string(got)), " ") != strings.Join(strings.Fields(val), " ") {
			fmt.Fprintf(errw, "sysctl %s=%q: this kernel kept %q\n", rel, val, strings.TrimSpace(string(got)))
			return SysctlUnsupported
		}
	}
	return 0
}
