package pidfd

import (
	"context"
	"os/exec"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func start(t *testing.T, args ...string) (pid, fd int) {
	t.Helper()
	cmd := exec.Command(args[0], args[1:]...)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pid = cmd.Process.Pid
	fd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		t.Fatal(err)
	}
	_ = cmd.Process.Release() // reaped by Wait
	return pid, fd
}

// TestWaitReapsChild: a child's exit status comes back and it is reaped.
func TestWaitReapsChild(t *testing.T) {
	pid, fd := start(t, "sh", "-c", "exit 7")
	ex, err := Wait(context.Background(), pid, fd)
	if err != nil || !ex.Child || ex.Status.ExitStatus() != 7 {
		t.Fatalf("Wait = %+v, %v; want child exited with 7", ex, err)
	}
	if err := unix.Kill(pid, 0); err != unix.ESRCH {
		t.Errorf("child %d not reaped: kill 0 = %v", pid, err)
	}
}

// TestWaitEndsWithContext: an ended context ends the wait, and the
// process keeps running.
func TestWaitEndsWithContext(t *testing.T) {
	pid, fd := start(t, "sleep", "600")
	t.Cleanup(func() { _ = unix.Kill(pid, unix.SIGKILL); _, _ = unix.Wait4(pid, nil, 0, nil) })
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, err := Wait(ctx, pid, fd); err != context.DeadlineExceeded {
		t.Fatalf("Wait = %v, want the context's deadline", err)
	}
	if err := unix.Kill(pid, 0); err != nil {
		t.Errorf("process %d gone after the wait ended: %v", pid, err)
	}
}

// TestWaitNoReapLeavesZombie: the exit is seen, the child left to its
// reaper.
func TestWaitNoReapLeavesZombie(t *testing.T) {
	pid, fd := start(t, "true")
	ex, err := WaitNoReap(context.Background(), pid, fd)
	if err != nil || ex.Child {
		t.Fatalf("WaitNoReap = %+v, %v", ex, err)
	}
	var ws unix.WaitStatus
	if wpid, err := unix.Wait4(pid, &ws, unix.WNOHANG, nil); wpid != pid || err != nil {
		t.Errorf("child not left to be reaped: wait4 = %d, %v", wpid, err)
	}
}
