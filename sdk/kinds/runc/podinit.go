package runc

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"syscall"
	"time"

	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"

	"github.com/magnetar-io/magnetar/sdk/kinds/internal/podinit"
	"github.com/magnetar-io/magnetar/sdk/kinds/internal/procstat"
)

// PodInitMain runs the init of a pod's shared PID namespace when the
// process was started as one by this package (PID 1 of a new PID namespace,
// with MAGNETAR_POD_INIT=1 in its environment): it then reaps the pod's
// orphans until it is killed, and never returns. Otherwise it returns false
// at once.
//
// A pod whose containers share one PID namespace (Kubernetes'
// shareProcessNamespace) gets a namespace of its own, held by this minimal
// init rather than by its first container: one container's exit then never
// ends the others. Every program that opens a runc [Backend] must call it
// first thing in main, as it calls the wasm kind's RunnerMain:
//
//	func main() {
//		if runc.PodInitMain() {
//			return
//		}
//		...
//	}
//
// Without it, creating a container that joins its pod's PID namespace fails
// with FailedPrecondition. The gvisor kind's sandboxes run the same init
// (gvisor.PodInitMain is the same function).
func PodInitMain() bool { return podinit.Main() }

// podInitProc is a running pod init, as the sandbox records it.
type podInitProc struct {
	// Pid is the init's pid in the sandboxer's PID namespace.
	Pid int `json:"pid"`
	// StartTime is its start time in clock ticks after boot (field 22 of
	// /proc/<pid>/stat), which tells it from a later process of that pid.
	StartTime uint64 `json:"startTime"`
}

// startPodInit starts a pod init in a new PID namespace. The caller reaps
// it through the returned command.
func startPodInit(exe string) (*exec.Cmd, podInitProc, error) {
	if !podinit.Hooked() {
		return nil, podInitProc{}, fmt.Errorf("a pod that shares its PID namespace needs an init: the program must call runc.PodInitMain first thing in main: %w", errdefs.ErrFailedPrecondition)
	}
	cmd := exec.Command(exe)
	cmd.Env = []string{podinit.Env + "=1", "GOMAXPROCS=1", "GOGC=off"}
	cmd.Dir = "/"
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: unix.CLONE_NEWPID, Setsid: true}
	if err := cmd.Start(); err != nil {
		return nil, podInitProc{}, fmt.Errorf("start the pod's PID namespace init: %w", err)
	}
	st, err := procstat.StartTime(cmd.Process.Pid)
	if err != nil {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		return nil, podInitProc{}, fmt.Errorf("pod init: %w", err)
	}
	return cmd, podInitProc{Pid: cmd.Process.Pid, StartTime: st}, nil
}

// alive reports whether the recorded init still runs (and is the same
// process).
func (p podInitProc) alive() bool {
	if p.Pid <= 0 {
		return false
	}
	st, err := procstat.StartTime(p.Pid)
	return err == nil && st == p.StartTime
}

// nsPath is the init's PID namespace, as containers join it.
func (p podInitProc) nsPath() string { return fmt.Sprintf("/proc/%d/ns/pid", p.Pid) }

// podInitKillWait bounds how long ending a pod init waits for it to go.
const podInitKillWait = 10 * time.Second

// kill ends the init (and with it every process left in its namespace)
// and waits until it is gone. cmd is the init's command when this process
// started it (it is reaped then); nil after a restart, when another
// process reaps it.
func (p podInitProc) kill(cmd *exec.Cmd) error {
	if cmd != nil {
		if err := cmd.Process.Kill(); err != nil && !errors.Is(err, os.ErrProcessDone) {
			return fmt.Errorf("kill the pod init %d: %w", p.Pid, err)
		}
		// cmd.Wait runs on the goroutine that started it.
		return nil
	}
	if !p.alive() {
		return nil
	}
	fd, err := unix.PidfdOpen(p.Pid, 0)
	if errors.Is(err, unix.ESRCH) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("open the pod init %d: %w", p.Pid, err)
	}
	defer unix.Close(fd)
	// Checked again through the pidfd: the pid cannot be reused now.
	if !p.alive() {
		return nil
	}
	if err := unix.PidfdSendSignal(fd, unix.SIGKILL, nil, 0); err != nil && !errors.Is(err, unix.ESRCH) {
		return fmt.Errorf("kill the pod init %d: %w", p.Pid, err)
	}
	fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
	deadline := time.Now().Add(podInitKillWait)
	for {
		n, err := unix.Poll(fds, int(time.Until(deadline).Milliseconds()))
		if n > 0 {
			return nil
		}
		if err != nil && !errors.Is(err, unix.EINTR) {
			return fmt.Errorf("wait for the pod init %d: %w", p.Pid, err)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("pod init %d still runs %v after SIGKILL: %w", p.Pid, podInitKillWait, errdefs.ErrUnavailable)
		}
	}
}
