package runc

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/magnetar-io/magnetar/sdk/backend"
	"github.com/magnetar-io/magnetar/sdk/kinds/internal/procstat"
)

// TestRecoveredExecPidReuse: a recovered exec'd process is watched only
// if its pid still names a process started when it was; otherwise (the
// pid was reused, or is gone) it is taken for exited with the exit status
// the supervisor recorded, and the process now holding the pid is never
// signalled.
func TestRecoveredExecPidReuse(t *testing.T) {
	orphans := map[int]uint32{}
	b := &Backend{cfg: Config{OrphanExit: func(pid int) (uint32, time.Time, bool) {
		code, ok := orphans[pid]
		return code, time.Now(), ok
	}}}
	b.life, b.endLife = context.WithCancel(context.Background())
	defer func() { b.endLife(); b.wg.Wait() }()

	cmd := exec.Command("sleep", "60")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pid := cmd.Process.Pid
	defer func() { _ = unix.Kill(pid, unix.SIGKILL); _, _ = unix.Wait4(pid, nil, 0, nil) }()
	start, err := procstat.StartTime(pid)
	if err != nil {
		t.Fatal(err)
	}
	orphans[pid] = 42

	// Another start time: the pid is someone else's now.
	other := newProc(nil, "other", false, backend.Stdio{})
	other.pid, other.startTime, other.state = pid, start+1, stateRunning
	b.watchRecoveredExec(other)
	st := waitProc(t, other)
	if st.Code != 42 {
		t.Errorf("exit of an exec whose pid was reused = %d, want the recorded 42", st.Code)
	}
	if err := other.Kill(context.Background(), syscall.SIGKILL, false); err == nil {
		t.Error("kill of an exec whose pid was reused succeeded")
	}
	if err := unix.Kill(pid, 0); err != nil {
		t.Fatalf("the process holding the pid was hurt: %v", err)
	}

	// No start time recorded: it cannot be told apart, so it is not taken.
	unknown := newProc(nil, "unknown", false, backend.Stdio{})
	unknown.pid, unknown.state = pid, stateRunning
	b.watchRecoveredExec(unknown)
	if st := waitProc(t, unknown); st.Code != 42 {
		t.Errorf("exit of an exec without a start time = %d, want 42", st.Code)
	}

	// The same process: watched, signalled through its pidfd, reaped.
	same := newProc(nil, "same", false, backend.Stdio{})
	same.pid, same.startTime, same.state = pid, start, stateRunning
	b.watchRecoveredExec(same)
	select {
	case <-same.done:
		t.Fatal("a running recovered exec was taken for exited")
	default:
	}
	if err := same.Kill(context.Background(), syscall.SIGTERM, false); err != nil {
		t.Fatal(err)
	}
	if st := waitProc(t, same); st.Code != 128+uint32(syscall.SIGTERM) {
		t.Errorf("exit of the recovered exec = %d, want %d", st.Code, 128+syscall.SIGTERM)
	}

	// Gone: the exit status the supervisor recorded, or 255.
	gone := newProc(nil, "gone", false, backend.Stdio{})
	gone.pid, gone.startTime, gone.state = pid, start, stateRunning
	delete(orphans, pid)
	b.watchRecoveredExec(gone)
	if st := waitProc(t, gone); st.Code != 255 {
		t.Errorf("exit of a gone exec without a record = %d, want 255", st.Code)
	}
}

func waitProc(t *testing.T, p *proc) backend.ExitStatus {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := p.Wait(ctx)
	if err != nil {
		t.Fatalf("wait %s: %v", p.id, err)
	}
	return st
}

// TestStartedByRunc: a pid file names the exec'd process whose start was
// cut short only if that process started just before the file was
// written; a process started after it (the pid reused) or long before
// is not taken.
func TestStartedByRunc(t *testing.T) {
	cmd := exec.Command("sleep", "60")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	pidFile := filepath.Join(t.TempDir(), "exec.pid")
	if err := os.WriteFile(pidFile, []byte(strconv.Itoa(cmd.Process.Pid)), 0o600); err != nil {
		t.Fatal(err)
	}
	if pid, _, ok := startedByRunc(pidFile); !ok || pid != cmd.Process.Pid {
		t.Errorf("fresh pid file: %d, %v; want %d", pid, ok, cmd.Process.Pid)
	}
	for _, shift := range []time.Duration{-time.Minute, time.Minute} {
		at := time.Now().Add(shift)
		if err := os.Chtimes(pidFile, at, at); err != nil {
			t.Fatal(err)
		}
		if pid, _, ok := startedByRunc(pidFile); ok {
			t.Errorf("pid file written %v from the process's start: took %d", shift, pid)
		}
	}
	if _, _, ok := startedByRunc(filepath.Join(t.TempDir(), "none.pid")); ok {
		t.Error("a missing pid file was taken")
	}
}

// TestExecExitKeptUntilRecorded: an exec'd process's exit is reported
// without reaping it, so that until the engine recorded the exit the
// process stays a zombie whose status its next reaper (the supervisor,
// after a crash) learns; ExitRecorded then reaps it.
func TestExecExitKeptUntilRecorded(t *testing.T) {
	b := &Backend{}
	b.life, b.endLife = context.WithCancel(context.Background())
	defer func() { b.endLife(); b.wg.Wait() }()
	for _, tc := range []struct {
		script string
		want   uint32
	}{{"exit 7", 7}, {"kill -KILL $$", 137}} {
		cmd := exec.Command("sh", "-c", tc.script)
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		pid := cmd.Process.Pid
		p := newProc(nil, "x", false, backend.Stdio{})
		p.pid, p.state = pid, stateRunning
		b.watchExec(pid, p)
		if st := waitProc(t, p); st.Code != tc.want {
			t.Errorf("%q: exit %d, want %d", tc.script, st.Code, tc.want)
		}
		if code, ok := procstat.ExitOfZombie(pid); !ok || code != tc.want {
			t.Errorf("%q: after the exit was reported the process is not a zombie with status %d: %d, %v", tc.script, tc.want, code, ok)
		}
		p.ExitRecorded()
		if _, err := os.Stat("/proc/" + strconv.Itoa(pid)); err == nil {
			t.Errorf("%q: process %d not reaped after ExitRecorded", tc.script, pid)
		}
	}
}
