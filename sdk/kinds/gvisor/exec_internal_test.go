package gvisor

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"syscall"
	"testing"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	"github.com/magnetar-io/magnetar/sdk/backend"
	"github.com/magnetar-io/magnetar/sdk/kinds/internal/procstat"
)

// testContainer is a container of a backend with no runsc behind it, for
// the exec'd processes' watch and recovery.
func testContainer(t *testing.T, orphans map[int]uint32) *container {
	b := &Backend{stop: make(chan struct{}), kept: map[detacher]struct{}{}}
	b.cfg.OrphanExit = func(pid int) (uint32, time.Time, bool) {
		code, ok := orphans[pid]
		return code, time.Now(), ok
	}
	t.Cleanup(func() { close(b.stop); b.wg.Wait() })
	s := &sandbox{b: b, cfg: backend.SandboxConfig{ID: "sb"}}
	return &container{s: s, id: "c", bundle: t.TempDir(), execs: map[string]*execProc{}}
}

func waitExec(t *testing.T, p *execProc) backend.ExitStatus {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := p.Wait(ctx)
	if err != nil {
		t.Fatalf("wait %s: %v", p.id, err)
	}
	return st
}

// TestExecExitKeptUntilRecorded: the exit of an exec's `runsc exec`
// process is reported without reaping it (its next reaper, the
// supervisor after a crash, learns the status too); ExitRecorded reaps it.
func TestExecExitKeptUntilRecorded(t *testing.T) {
	c := testContainer(t, nil)
	cmd := exec.Command("sh", "-c", "exit 7")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pid := cmd.Process.Pid
	p := newExecProc(c, "x", nil, backend.Stdio{})
	p.mu.Lock()
	p.pid, p.child, p.state = pid, true, execRunning
	p.watch()
	p.mu.Unlock()
	if st := waitExec(t, p); st.Code != 7 {
		t.Errorf("exit %d, want 7", st.Code)
	}
	if code, ok := procstat.ExitOfZombie(pid); !ok || code != 7 {
		t.Errorf("after the exit was reported the process is not a zombie with status 7: %d, %v", code, ok)
	}
	p.ExitRecorded()
	if _, err := os.Stat("/proc/" + strconv.Itoa(pid)); err == nil {
		t.Errorf("process %d not reaped after ExitRecorded", pid)
	}
	if err := p.Delete(context.Background()); err != nil {
		t.Errorf("delete: %v", err)
	}
}

// TestRecoverExecPidReuse: a recovered exec is watched only if its pid
// still names a process started when its `runsc exec` did; otherwise it
// is taken for exited with the status the supervisor recorded (255 if
// none), and the process now holding the pid is never signalled.
func TestRecoverExecPidReuse(t *testing.T) {
	orphans := map[int]uint32{}
	c := testContainer(t, orphans)
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
	proc := &specs.Process{Args: []string{"true"}}
	recover := func(id string, st uint64) *execProc {
		state, _ := json.Marshal(execRecovery{StartTime: st})
		bp, err := c.RecoverExec(context.Background(), backend.ExecConfig{ID: id, Process: proc}, backend.ExecRecord{Pid: uint32(pid), State: state})
		if err != nil {
			t.Fatal(err)
		}
		return bp.(*execProc)
	}
	other := recover("other", start+1)
	if st := waitExec(t, other); st.Code != 42 {
		t.Errorf("exit of an exec whose pid was reused = %d, want the recorded 42", st.Code)
	}
	if err := other.Kill(context.Background(), syscall.SIGKILL, false); err == nil {
		t.Error("kill of an exec whose pid was reused succeeded")
	}
	if err := unix.Kill(pid, 0); err != nil {
		t.Fatalf("the process holding the pid was hurt: %v", err)
	}
	// The same start time: the same process, watched and signalled.
	same := recover("same", start)
	if err := same.Kill(context.Background(), syscall.SIGTERM, false); err != nil {
		t.Fatalf("kill of the recovered exec: %v", err)
	}
	if st := waitExec(t, same); st.Code != 128+uint32(syscall.SIGTERM) {
		t.Errorf("exit of the recovered exec killed with SIGTERM = %d, want %d", st.Code, 128+uint32(syscall.SIGTERM))
	}
	if _, bad := c.RecoverExec(context.Background(), backend.ExecConfig{ID: "bad", Process: proc}, backend.ExecRecord{Pid: 1, State: []byte("{")}); bad == nil {
		t.Error("RecoverExec with a bad recovery state did not fail")
	}
}

// TestNoSuchProcess: runsc kill's error for an init that is gone from the
// sentry while runsc's state still says running (seen in CI's critest,
// failing StopPodSandbox) is recognized, as containerd's runc shim
// recognizes runc's; other kill failures are not.
func TestNoSuchProcess(t *testing.T) {
	for _, tc := range []struct {
		err  error
		gone bool
	}{
		{errors.New(`/usr/bin/runsc did not terminate successfully: exit status 128: signaling container "7aeba9b7": signaling process in container "7aeba9b7" PID 0: no such process` + "\n"), true},
		{fmt.Errorf("kill: %w", syscall.ESRCH), true},
		{errors.New("/usr/bin/runsc did not terminate successfully: exit status 128: loading container: file does not exist"), false},
		{errors.New("signal: killed"), false},
	} {
		if got := noSuchProcess(tc.err); got != tc.gone {
			t.Errorf("noSuchProcess(%q) = %v, want %v", tc.err, got, tc.gone)
		}
	}
}
