// Package exitcode turns a wait status into the shell-style exit code that
// containerd and CRI report.
package exitcode

import "golang.org/x/sys/unix"

// Unknown is reported when a process's status cannot be known.
const Unknown = 255

// Of is the process's exit status, or 128+signal when a signal killed it.
func Of(ws unix.WaitStatus) uint32 {
	switch {
	case ws.Exited():
		return uint32(ws.ExitStatus())
	case ws.Signaled():
		return 128 + uint32(ws.Signal())
	}
	return Unknown
}
