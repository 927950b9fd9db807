package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	runtime "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/magnetar-io/magnetar/internal/testutil"
	"github.com/magnetar-io/magnetar/sandboxer/supervisor"
)

// workerPid returns the pid of the sandboxer's worker: the child of the
// supervisor (the process the harness started).
func (e *env) workerPid(t testing.TB) int {
	t.Helper()
	pid, children := e.findWorker(t)
	if pid == 0 {
		t.Fatalf("the supervisor %d has no worker (children %q)", e.sandboxer.Process.Pid, children)
	}
	return pid
}

// killWorkerHeld kills the worker with SIGKILL while its supervisor is
// held still (SIGSTOP), so that the gap lasts: nothing reaps an exiting
// container or starts a worker until resume is called (it may be called
// more than once; the test's cleanup calls it too).
func (e *env) killWorkerHeld(t testing.TB) (old int, resume func()) {
	t.Helper()
	sup := e.sandboxer.Process.Pid
	old = e.workerPid(t)
	if err := syscall.Kill(sup, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	resumed := false
	resume = func() {
		if !resumed {
			resumed = true
			_ = syscall.Kill(sup, syscall.SIGCONT)
		}
	}
	t.Cleanup(resume)
	if err := syscall.Kill(old, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 30*time.Second, func() bool { return !alive(old) }, "the worker is gone")
	return old, resume
}

// findWorker returns the worker's pid (0: none now) and the supervisor's
// children.
func (e *env) findWorker(t testing.TB) (int, string) {
	t.Helper()
	sup := e.sandboxer.Process.Pid
	pid, children := workerOf(sup)
	if children == "" {
		if _, err := os.Stat(fmt.Sprintf("/proc/%d", sup)); err != nil {
			t.Fatalf("the supervisor %d: %v", sup, err)
		}
	}
	return pid, children
}

// workerOf returns the pid of the worker of supervisor sup (0: none now)
// and the pids of all its children.
func workerOf(sup int) (int, string) {
	// Each thread lists the children it forked.
	files, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/children", sup))
	var data []byte
	for _, f := range files {
		b, _ := os.ReadFile(f)
		data = append(data, b...)
		data = append(data, ' ')
	}
	for _, f := range strings.Fields(string(data)) {
		pid, err := strconv.Atoi(f)
		if err != nil {
			continue
		}
		// The worker runs with the supervisor's arguments; pod inits and
		// orphaned containers that the supervisor adopted do not. Nor
		// does the binary an upgrade checks (--handover-version) — but
		// between its fork and its exec it has the supervisor's command
		// line: the worker alone has the control channel in its
		// environment.
		cmd, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		env, _ := os.ReadFile(fmt.Sprintf("/proc/%d/environ", pid))
		if strings.Contains(string(cmd), "magnetar-sandboxer\x00--listen\x00") && strings.Contains("\x00"+string(env), "\x00"+supervisor.EnvFD+"=") {
			return pid, string(data)
		}
	}
	return 0, string(data)
}

// waitNewWorker waits until a worker other than old serves containerd.
func (e *env) waitNewWorker(t *testing.T, old int, p *pod) int {
	t.Helper()
	var pid int
	testutil.Eventually(t, time.Minute, func() bool {
		pid, _ = e.findWorker(t)
		if pid == 0 || pid == old {
			return false
		}
		_, err := e.rt.PodSandboxStatus(ctxT(t), &runtime.PodSandboxStatusRequest{PodSandboxId: p.id})
		return err == nil
	}, "a new sandboxer worker serves containerd")
	return pid
}

func (e *env) requireRunning(t testing.TB, id string) {
	t.Helper()
	resp, err := e.rt.ContainerStatus(ctxT(t), &runtime.ContainerStatusRequest{ContainerId: id})
	if err != nil || resp.Status.State != runtime.ContainerState_CONTAINER_RUNNING {
		t.Fatalf("container %s: %v, %v; want running", id, resp.GetStatus().GetState(), err)
	}
}

// TestSandboxerCrashKeepsContainers kills the sandboxer's worker (kill -9)
// under a running pod: containerd notices nothing (the supervisor keeps
// its task connections), the container keeps running with the same
// process, a container that exits while no worker runs reports its real
// exit code, and the pod serves new containers and stops cleanly.
func TestSandboxerCrashKeepsContainers(t *testing.T) {
	e := setup(t)
	p := e.runPod(t, false)
	survivor := e.startContainer(t, p, "survivor", "exec sleep 600")
	gapper := e.startContainer(t, p, "gapper", "trap 'exit 7' TERM; while :; do sleep 0.1; done")
	survivorPid := e.containerPid(t, survivor)
	gapperPid := e.containerPid(t, gapper)

	// Hold the supervisor still so that the gap lasts while the second
	// container exits: nothing reaps it or starts a worker meanwhile.
	old, resume := e.killWorkerHeld(t)
	if err := syscall.Kill(gapperPid, syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if !testutil.Poll(30*time.Second, func() bool { return !alive(gapperPid) }) {
		st, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", gapperPid))
		wchan, _ := os.ReadFile(fmt.Sprintf("/proc/%d/wchan", gapperPid))
		ps, _ := exec.Command("ps", "-ef", "--forest").CombinedOutput()
		t.Fatalf("the container did not exit on SIGTERM during the gap:\n%s\nwchan %s\n%s", st, wchan, ps)
	}
	resume()
	e.waitNewWorker(t, old, p)

	e.requireRunning(t, survivor)
	// The recovered container's cgroup is read again (CRI stats go through
	// the pod's task socket to the new worker).
	if st, err := e.rt.ContainerStats(ctxT(t), &runtime.ContainerStatsRequest{ContainerId: survivor}); err != nil || st.GetStats().GetMemory().GetWorkingSetBytes().GetValue() == 0 {
		t.Errorf("stats of the recovered container: %v, %v", st.GetStats().GetMemory(), err)
	}
	if got := e.containerPid(t, survivor); got != survivorPid || !alive(survivorPid) {
		t.Errorf("surviving container: pid %d (alive %v), want %d still running", got, alive(survivorPid), survivorPid)
	}
	if st := e.waitExited(t, gapper); st.ExitCode != 7 {
		t.Errorf("container that exited during the gap: exit %d, want its own 7", st.ExitCode)
	}

	next := e.startContainer(t, p, "after-crash", "echo served after the crash")
	e.waitExited(t, next)
	if got := e.logOf(t, p, "after-crash", "served after the crash"); !strings.Contains(got, "served after the crash") {
		t.Errorf("container started after the crash logged %q", got)
	}
	if _, err := e.rt.StopContainer(ctxT(t), &runtime.StopContainerRequest{ContainerId: survivor, Timeout: 1}); err != nil {
		t.Fatalf("StopContainer: %v", err)
	}
	if st := e.waitExited(t, survivor); st.ExitCode != 137 {
		t.Errorf("surviving container stopped after the crash: exit %d, want 137 (SIGKILL after the grace period)", st.ExitCode)
	}
	e.removePod(t, p)
	if _, err := os.Stat(filepath.Join(e.stateDir, "sandboxes", p.id)); !os.IsNotExist(err) {
		t.Errorf("state of the pod remains after removal: %v", err)
	}
}

// installCopy replaces the file at path with a copy of itself (a new
// inode), as installing a new binary does.
func installCopy(t *testing.T, path string) {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	tmp := path + ".new"
	if err := os.WriteFile(tmp, data, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// alive reports whether pid runs (a zombie counts as gone).
func alive(pid int) bool {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	i := strings.LastIndexByte(string(data), ')')
	return i < 0 || !strings.HasPrefix(strings.TrimSpace(string(data[i+1:])), "Z")
}
