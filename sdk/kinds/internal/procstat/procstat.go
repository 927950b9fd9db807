// Package procstat reads what the kinds need to know of a host process
// beyond its pid: when it started (which tells it from a later process
// with the same pid) and how a child that exited ended, without reaping
// it.
package procstat

import (
	"bytes"
	"fmt"
	"os"
	"strconv"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/magnetar-io/magnetar/sdk/kinds/internal/exitcode"
)

// StartTime returns when pid started, in clock ticks after boot (field 22
// of /proc/<pid>/stat).
func StartTime(pid int) (uint64, error) {
	start, _, err := Stat(pid)
	return start, err
}

// Stat returns when pid started (see StartTime) and its state letter
// (field 3 of /proc/<pid>/stat: R, S, D, Z, X, ...). A process that does
// not exist gives an error that os.IsNotExist matches.
func Stat(pid int) (start uint64, state byte, err error) {
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, 0, err
	}
	// The command name (field 2) may hold spaces and parentheses: the
	// fields after it start behind the last ')'.
	i := bytes.LastIndexByte(data, ')')
	if i < 0 {
		return 0, 0, fmt.Errorf("parse /proc/%d/stat", pid)
	}
	fields := bytes.Fields(data[i+1:])
	if len(fields) < 20 || len(fields[0]) != 1 {
		return 0, 0, fmt.Errorf("parse /proc/%d/stat: %d fields", pid, len(fields))
	}
	start, err = strconv.ParseUint(string(fields[19]), 10, 64)
	return start, fields[0][0], err
}

// sigchldInfo is the start of a siginfo_t for SIGCHLD (Linux, every
// architecture Go runs on: three ints, padding to 8 bytes, then pid,
// uid and status).
type sigchldInfo struct {
	Signo, Errno, Code int32
	_                  int32
	Pid                int32
	UID                uint32
	Status             int32
}

// Codes of a SIGCHLD's si_code.
const (
	cldExited = 1
	cldKilled = 2
	cldDumped = 3
)

// ExitOfZombie returns the exit code (128+signal for a signal) of pid, a
// child of this process that has exited, leaving it unreaped (a zombie),
// so that the pid cannot name another process until it is reaped, and so
// that, should this process die first, its next reaper learns the status
// too. ok is false when pid is not an exited child.
func ExitOfZombie(pid int) (code uint32, ok bool) {
	var info unix.Siginfo
	if err := unix.Waitid(unix.P_PID, pid, &info, unix.WEXITED|unix.WNOHANG|unix.WNOWAIT, nil); err != nil {
		return 0, false
	}
	si := (*sigchldInfo)(unsafe.Pointer(&info))
	if si.Signo != int32(unix.SIGCHLD) || int(si.Pid) != pid {
		return 0, false
	}
	switch si.Code {
	case cldExited:
		return uint32(si.Status), true
	case cldKilled, cldDumped:
		return 128 + uint32(si.Status), true
	}
	return exitcode.Unknown, true
}

// Reap reaps pid, a child of this process that has exited (nothing if it
// is not one).
func Reap(pid int) {
	var ws unix.WaitStatus
	_, _ = unix.Wait4(pid, &ws, unix.WNOHANG, nil)
}
