package keptio

import (
	"fmt"
	"os"
	"time"

	"golang.org/x/sys/unix"

	"github.com/magnetar-io/magnetar/sdk/kinds/internal/hoststdio"
)

// Roles of a terminal's descriptors in its Set.
const (
	roleMaster     = "master"      // the pty master
	roleStdin      = "stdin"       // the stdin FIFO's read end, copied to the master
	roleStdinHold  = "stdin-hold"  // a write end of the stdin FIFO, until CloseStdin
	roleStdout     = "stdout"      // the stdout FIFO's (or file's) write end
	roleStdoutHold = "stdout-hold" // a read end of the stdout FIFO, never read
)

// Terminal is a process's terminal: its pty master copied to its stdout
// and from its stdin, everything kept in a Set.
type Terminal struct {
	set *Set
	// out is closed when the output copy ended (nil: none).
	out <-chan struct{}
}

// StartTerminal keeps master (which it takes over) and the ends of the
// stdio paths stdin and stdout (FIFOs, files, fifo:// or file:// URIs, or
// empty) in set and starts the copies: the master's output to stdout,
// stdin to the master. A held write end of the stdin FIFO keeps the
// terminal from seeing end of file until CloseStdin; once stdin ends
// after that, the terminal is hung up (the master closed), as
// containerd's console copy does.
func StartTerminal(set *Set, master *os.File, stdin, stdout string) (_ *Terminal, retErr error) {
	defer func() {
		if retErr != nil {
			_ = set.Close()
		}
	}()
	if _, err := set.Add(roleMaster, master); err != nil {
		return nil, err
	}
	if stdout != "" {
		p, isFile, err := hoststdio.Path(stdout)
		if err != nil {
			return nil, err
		}
		if !isFile && isFifo(p) {
			// The held read end first: then the write end opens at once.
			if err := set.open(roleStdoutHold, p, unix.O_RDONLY|unix.O_NONBLOCK); err != nil {
				return nil, err
			}
			if err := set.open(roleStdout, p, unix.O_WRONLY|unix.O_NONBLOCK); err != nil {
				return nil, err
			}
		} else if err := set.open(roleStdout, p, unix.O_WRONLY|unix.O_APPEND|unix.O_CREAT); err != nil {
			return nil, err
		}
	}
	if stdin != "" {
		p, _, err := hoststdio.Path(stdin)
		if err != nil {
			return nil, err
		}
		// The read end first: a non-blocking open for reading needs no
		// writer, and the hold's open for writing needs a reader.
		if err := set.open(roleStdin, p, unix.O_RDONLY|unix.O_NONBLOCK); err != nil {
			return nil, err
		}
		if isFifo(p) {
			if err := set.open(roleStdinHold, p, unix.O_WRONLY|unix.O_NONBLOCK); err != nil {
				return nil, err
			}
		}
	}
	return startCopies(set)
}

// ResumeTerminal takes back the terminal an earlier process kept in set
// and resumes its copies; nil when none was kept.
func ResumeTerminal(set *Set) (*Terminal, error) {
	if set.Resume(roleMaster) == nil {
		return nil, nil
	}
	for _, role := range []string{roleStdout, roleStdoutHold, roleStdin, roleStdinHold} {
		set.Resume(role)
	}
	return startCopies(set)
}

func startCopies(set *Set) (*Terminal, error) {
	t := &Terminal{set: set}
	if set.Has(roleStdout) {
		out, err := set.Copy(roleStdout, roleMaster, func() {
			// The terminal is closed: the reader gets end of file.
			_ = set.Release(roleStdout, roleStdoutHold)
		})
		if err != nil {
			return nil, err
		}
		t.out = out
	}
	if set.Has(roleStdin) {
		if _, err := set.Copy(roleMaster, roleStdin, func() {
			_ = set.Release(roleStdin, roleMaster) // hang up
		}); err != nil {
			return nil, err
		}
	}
	return t, nil
}

// Resize sets the terminal's size.
func (t *Terminal) Resize(width, height uint32) error {
	m := t.set.Get(roleMaster)
	if m == nil {
		return fmt.Errorf("terminal is closed")
	}
	rc, err := m.SyscallConn()
	if err != nil {
		return err
	}
	var ierr error
	err = rc.Control(func(fd uintptr) {
		ierr = unix.IoctlSetWinsize(int(fd), unix.TIOCSWINSZ, &unix.Winsize{Row: uint16(height), Col: uint16(width)})
	})
	if err != nil {
		return err
	}
	return ierr
}

// CloseStdin lets go of the held write end of the stdin FIFO.
func (t *Terminal) CloseStdin() error { return t.set.Release(roleStdinHold) }

// Exited ends the output once the process exited: what is left in the pty
// is copied for up to drain, then the stdout end is released so that its
// reader sees end of file even if other processes keep the terminal open.
func (t *Terminal) Exited(drain time.Duration) {
	if t.out != nil {
		tm := time.NewTimer(drain)
		select {
		case <-t.out:
		case <-tm.C:
		}
		tm.Stop()
	}
	_ = t.set.Release(roleStdout, roleStdoutHold)
}

// Detach stops the copies and leaves the terminal to the next process.
func (t *Terminal) Detach() { t.set.Detach() }

// Close releases the terminal (the master too: it hangs up).
func (t *Terminal) Close() error { return t.set.Close() }

// open opens path with flag and keeps it as role.
func (s *Set) open(role, path string, flag int) error {
	fd, err := unix.Open(path, flag|unix.O_CLOEXEC, 0o640)
	if err != nil {
		return &os.PathError{Op: "open", Path: path, Err: err}
	}
	_, err = s.Add(role, os.NewFile(uintptr(fd), path))
	return err
}

func isFifo(path string) bool {
	st, err := os.Stat(path)
	return err == nil && st.Mode()&os.ModeNamedPipe != 0
}
