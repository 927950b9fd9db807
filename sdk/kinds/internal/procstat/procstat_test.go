package procstat

import (
	"os"
	"os/exec"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/magnetar-io/magnetar/internal/testutil"
)

func TestStartTime(t *testing.T) {
	a, err := StartTime(os.Getpid())
	if err != nil || a == 0 {
		t.Fatalf("StartTime(self) = %d, %v", a, err)
	}
	if _, err := StartTime(0); err == nil {
		t.Error("StartTime(0) did not fail")
	}
}

// zombie starts sh -c script and waits until it exited, unreaped.
func zombie(t *testing.T, script string) int {
	t.Helper()
	cmd := exec.Command("sh", "-c", script)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pid := cmd.Process.Pid
	t.Cleanup(func() { Reap(pid) })
	testutil.Eventually(t, 10*time.Second, func() bool {
		var info unix.Siginfo
		err := unix.Waitid(unix.P_PID, pid, &info, unix.WEXITED|unix.WNOHANG|unix.WNOWAIT, nil)
		return err == nil && info.Signo == int32(unix.SIGCHLD)
	}, "sh exits")
	return pid
}

func TestExitOfZombie(t *testing.T) {
	for _, tc := range []struct {
		script string
		want   uint32
	}{
		{"exit 7", 7},
		{"exit 0", 0},
		{"kill -TERM $$", 128 + uint32(syscall.SIGTERM)},
	} {
		pid := zombie(t, tc.script)
		for range 2 { // it stays a zombie: asked twice, the same answer
			if code, ok := ExitOfZombie(pid); !ok || code != tc.want {
				t.Errorf("%q: ExitOfZombie = %d, %v; want %d", tc.script, code, ok, tc.want)
			}
		}
		Reap(pid)
		if _, ok := ExitOfZombie(pid); ok {
			t.Errorf("%q: ExitOfZombie after Reap still answers", tc.script)
		}
	}
	if _, ok := ExitOfZombie(os.Getpid()); ok {
		t.Error("ExitOfZombie of a process that runs answered")
	}
}
