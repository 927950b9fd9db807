package e2e

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	goruntime "runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	runtime "k8s.io/cri-api/pkg/apis/runtime/v1"

	sandboxv1 "github.com/magnetar-io/magnetar/gen/magnetar/sandbox/v1"
	"github.com/magnetar-io/magnetar/internal/harness"
	"github.com/magnetar-io/magnetar/internal/testutil"
)

// cgroupLines returns the v1 controller lines (or the v2 line) of
// /proc/<pid>/cgroup that name cgroup path.
func cgroupLines(t *testing.T, pid int, path string) []string {
	t.Helper()
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, l := range strings.Split(strings.TrimSpace(string(data)), "\n") {
		f := strings.SplitN(l, ":", 3)
		if len(f) == 3 && f[2] == path && !strings.HasPrefix(f[1], "name=") {
			out = append(out, l)
		}
	}
	return out
}

// cgroupLeft returns the directories of cgroup path that still exist in
// any hierarchy.
func cgroupLeft(path string) []string {
	var left []string
	dirs := []string{filepath.Join("/sys/fs/cgroup", path)}
	if ents, err := os.ReadDir("/sys/fs/cgroup"); err == nil {
		for _, e := range ents {
			dirs = append(dirs, filepath.Join("/sys/fs/cgroup", e.Name(), path))
		}
	}
	for _, d := range dirs {
		if _, err := os.Stat(d); err == nil {
			left = append(left, d)
		}
	}
	return left
}

// TestVMSandboxerRestart restarts magnetar-sandboxer's worker three
// ways under one running VM pod (sized from its resources; QEMU in a child
// of the pod's cgroup parent), reusing the pod so that only one VM boots:
//
//   - kill -9 of the worker, with a container exiting during the gap: the
//     containers keep running in the guest, containerd sees no TaskExit,
//     a counter printed every 100 ms reaches the CRI log with no gap and
//     no duplicate, exec and attach work on the recovered containers, and
//     the container that exited during the gap reports its own exit code;
//   - a live upgrade (magnetar-sandboxer upgrade): the same;
//   - a full restart (the supervisor stopped and started): containerd
//     reports the containers exited, and the new worker ends them in the
//     guest so that none runs unseen.
//
// The pod keeps its QEMU throughout; Controller.Wait still reports the
// VM's death, and removing the pod leaves no QEMU, cgroup, mount or state.
func TestVMSandboxerRestart(t *testing.T) {
	e := setup(t)
	e.requireGuest(t)
	name := fmt.Sprintf("vm-restart-%d", podSeq.Add(1))
	cfg := &runtime.PodSandboxConfig{
		Metadata:     &runtime.PodSandboxMetadata{Name: name, Namespace: "e2e", Uid: name + "-uid"},
		Hostname:     name,
		LogDirectory: filepath.Join(e.logDir, name),
		Linux: &runtime.LinuxPodSandboxConfig{
			CgroupParent: "/magnetar-e2e",
			SecurityContext: &runtime.LinuxSandboxSecurityContext{
				// hostPID: containers that ask for the node's PID namespace
				// run in the guest's own (where the agent is PID 1).
				NamespaceOptions: &runtime.NamespaceOption{Network: runtime.NamespaceMode_POD, Pid: runtime.NamespaceMode_NODE, Ipc: runtime.NamespaceMode_POD},
			},
			// The sum of the containers' resources: 1.5 CPUs, 128 MiB.
			Resources: &runtime.LinuxContainerResources{CpuPeriod: 100000, CpuQuota: 150000, MemoryLimitInBytes: 128 << 20},
		},
	}
	if err := os.MkdirAll(cfg.LogDirectory, 0o755); err != nil {
		t.Fatal(err)
	}
	resp, err := e.rt.RunPodSandbox(ctxT(t), &runtime.RunPodSandboxRequest{Config: cfg, RuntimeHandler: "magnetar-vm"})
	if err != nil {
		t.Fatalf("RunPodSandbox: %v", err)
	}
	p := &pod{id: resp.PodSandboxId, cfg: cfg}
	t.Cleanup(func() { e.removePod(t, p) })

	sb, err := e.api().GetSandbox(ctxT(t), &sandboxv1.GetSandboxRequest{SandboxId: p.id})
	if err != nil {
		t.Fatal(err)
	}
	pid := int(sb.GetSandbox().GetPid())
	if pid <= 0 {
		t.Fatalf("vm sandbox reports no QEMU pid: %v", sb.GetSandbox())
	}
	cg := "/magnetar-e2e/magnetar-vm-" + p.id
	if lines := cgroupLines(t, pid, cg); len(lines) == 0 {
		data, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
		t.Errorf("QEMU %d is not in a child of the pod's cgroup parent (%s):\n%s", pid, cg, data)
	}
	cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	args := strings.Join(strings.Split(string(cmdline), "\x00"), " ")
	wantCPUs := min(2, goruntime.NumCPU())
	if !strings.Contains(args, fmt.Sprintf("-smp %d ", wantCPUs)) || !strings.Contains(args, "-m 256M") {
		t.Errorf("QEMU not sized from 1.5 CPUs and 128 MiB (+128 MiB overhead): want -smp %d and -m 256M in %q", wantCPUs, args)
	}

	// containerd's task events, to show that it saw no container exit.
	events := e.watchTaskExits(t)

	nsOpts := p.cfg.Linux.GetSecurityContext().GetNamespaceOptions()
	const counterScript = "i=0; while :; do echo $i; i=$((i+1)); sleep 0.1; done"
	counter := e.startContainer(t, p, "counter", counterScript)
	echo := e.start(t, p, &runtime.ContainerConfig{
		Metadata: &runtime.ContainerMetadata{Name: "echo"},
		Image:    &runtime.ImageSpec{Image: harness.BusyboxImage},
		Command:  []string{"sh", "-c", "while read line; do echo got:$line; done"},
		LogPath:  "echo.log",
		Stdin:    true,
		Linux:    &runtime.LinuxContainerConfig{SecurityContext: &runtime.LinuxContainerSecurityContext{NamespaceOptions: nsOpts}},
	})
	// gapper exits with 7 once the host creates go in its volume (a host
	// directory shared into the guest), after saying so with done.
	vol := t.TempDir()
	gapper := e.start(t, p, &runtime.ContainerConfig{
		Metadata: &runtime.ContainerMetadata{Name: "gapper"},
		Image:    &runtime.ImageSpec{Image: harness.BusyboxImage},
		Command:  []string{"sh", "-c", "while [ ! -e /x/go ]; do sleep 0.1; done; touch /x/done; exit 7"},
		LogPath:  "gapper.log",
		Mounts:   []*runtime.Mount{{ContainerPath: "/x", HostPath: vol}},
		Linux:    &runtime.LinuxContainerConfig{SecurityContext: &runtime.LinuxContainerSecurityContext{NamespaceOptions: nsOpts}},
	})
	log := filepath.Join(p.cfg.LogDirectory, "counter.log")
	testutil.Eventually(t, 60*time.Second, func() bool { return len(seqLines(t, log, "")) >= 5 }, "the counter's first lines in its log")

	// (a) kill -9 of the worker. The supervisor is held still so that the
	// gap lasts while gapper exits in the guest.
	old, resume := e.killWorkerHeld(t)
	if err := os.WriteFile(filepath.Join(vol, "go"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 60*time.Second, func() bool {
		_, err := os.Stat(filepath.Join(vol, "done"))
		return err == nil
	}, "gapper exiting in the guest while no worker runs")
	resume()
	old = e.waitNewWorker(t, old, p)
	e.checkResumed(t, p, log, counter, echo, "after-crash")
	if st := e.waitExited(t, gapper); st.ExitCode != 7 {
		t.Errorf("container that exited during the gap: exit %d, want its own 7", st.ExitCode)
	}

	// (b) live upgrade.
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, filepath.Join(e.binDir, "magnetar-sandboxer"), "upgrade", "--run-dir", e.runDir).CombinedOutput()
	if err != nil {
		t.Fatalf("magnetar-sandboxer upgrade: %v\n%s", err, out)
	}
	e.waitNewWorker(t, old, p)
	e.checkResumed(t, p, log, counter, echo, "after-upgrade")
	for _, id := range []string{counter, echo} {
		if code, ok := events.exited(id); ok {
			t.Errorf("containerd saw container %s exit (%d) across the restarts", id, code)
		}
	}
	sb, err = e.api().GetSandbox(ctxT(t), &sandboxv1.GetSandboxRequest{SandboxId: p.id})
	if err != nil || int(sb.GetSandbox().GetPid()) != pid {
		t.Errorf("QEMU pid after the restarts: %v, %v; want %d", sb.GetSandbox().GetPid(), err, pid)
	}

	// (c) a full restart: containerd reports the containers exited (255
	// when its task Wait failed, 137 from the shim's delete); the new
	// worker ends them in the guest.
	e.stopSandboxer()
	if err := e.startSandboxer(); err != nil {
		t.Fatal(err)
	}
	if st := e.waitExited(t, counter); st.ExitCode != 137 && st.ExitCode != 255 {
		t.Errorf("container after a full restart: exit %d, want 137 or 255", st.ExitCode)
	}
	if _, ok := events.exited(counter); !ok {
		t.Errorf("containerd's events show no exit of %s after the full restart: the event watch sees nothing", counter)
	}
	// containerd's calls to the Controller fail (Unavailable) until the
	// new worker has recovered the VM pod and serves, as kubelet's would:
	// it retries them.
	var ps *runtime.PodSandboxStatusResponse
	if !testutil.Poll(time.Minute, func() bool {
		ps, err = e.rt.PodSandboxStatus(ctxT(t), &runtime.PodSandboxStatusRequest{PodSandboxId: p.id})
		return err == nil
	}) || ps.Status.State != runtime.PodSandboxState_SANDBOX_READY {
		t.Fatalf("pod after the full restart: %v, %v; want ready", ps.GetStatus().GetState(), err)
	}
	// A new container runs in the guest's PID namespace: ps shows every
	// process of the guest, and the counter is not among them.
	next := e.startContainer(t, p, "after-restart", "echo served after restart; ps -o pid,args; echo ps-done")
	if st := e.waitExited(t, next); st.ExitCode != 0 {
		t.Errorf("container started after the full restart: exit %d", st.ExitCode)
	}
	got := e.logOf(t, p, "after-restart", "ps-done")
	if !strings.Contains(got, "served after restart") || !strings.Contains(got, " 1 /init") {
		t.Errorf("container started after the full restart logged %q (want the agent as pid 1)", got)
	}
	if strings.Contains(got, "while :") || strings.Contains(got, "read line") {
		t.Errorf("a container from before the full restart still runs in the guest:\n%s", got)
	}

	// Controller.Wait (re-issued by containerd) reports the VM's death.
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatalf("kill QEMU %d: %v", pid, err)
	}
	if state := e.waitPodNotReady(t, p, 60*time.Second); state != runtime.PodSandboxState_SANDBOX_NOTREADY {
		t.Errorf("pod state after QEMU was killed = %s, want NOTREADY", state)
	}

	e.removePod(t, p)
	testutil.Poll(10*time.Second, func() bool {
		if err := syscall.Kill(pid, 0); errors.Is(err, syscall.ESRCH) {
			return true
		}
		data, _ := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		return strings.Contains(string(data), ") Z ") // killed, waiting for its reaper
	})
	if data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid)); err == nil && !strings.Contains(string(data), ") Z ") {
		t.Errorf("QEMU %d still runs after the pod was removed", pid)
	}
	if left := cgroupLeft(cg); len(left) > 0 {
		t.Errorf("QEMU's cgroup left after the pod was removed: %v", left)
	}
	if _, err := os.Stat(filepath.Join(e.stateDir, "sandboxes", p.id)); !os.IsNotExist(err) {
		t.Errorf("state of the pod remains after removal: %v", err)
	}
	if mi, err := os.ReadFile(fmt.Sprintf("/proc/%d/mountinfo", e.ctrd.Pid())); err == nil && strings.Contains(string(mi), p.id) {
		t.Errorf("mounts of the pod remain after removal:\n%s", mi)
	}
}

// checkResumed checks the pod's containers after a worker restart: both
// still run, the counter keeps printing with every number once and in
// order, exec into it works, and a line attached to echo's stdin reaches
// its log.
func (e *env) checkResumed(t *testing.T, p *pod, log, counter, echo, tag string) {
	t.Helper()
	e.requireRunning(t, counter)
	e.requireRunning(t, echo)
	before := len(seqLines(t, log, ""))
	testutil.Eventually(t, 60*time.Second, func() bool { return len(seqLines(t, log, "")) >= before+20 }, "20 more lines of the counter %s", tag)
	for i, n := range seqLines(t, log, "") {
		if n != i {
			t.Fatalf("%s: counter log line %d is %d: output lost or repeated: %v", tag, i, n, seqLines(t, log, ""))
		}
	}
	ex, err := e.rt.ExecSync(ctxT(t), &runtime.ExecSyncRequest{ContainerId: counter, Cmd: []string{"sh", "-c", "echo exec-" + tag + "; exit 4"}, Timeout: 60})
	if err != nil {
		t.Fatalf("%s: ExecSync: %v", tag, err)
	}
	if ex.ExitCode != 4 || !strings.Contains(string(ex.Stdout), "exec-"+tag) {
		t.Errorf("%s: ExecSync = code %d stdout %q; want 4 and exec-%s", tag, ex.ExitCode, ex.Stdout, tag)
	}
	bin, _ := harness.DefaultBinDir()
	cmd := exec.CommandContext(ctxT(t), filepath.Join(bin, "crictl"), "--config", e.ctrd.CrictlConfig(), "attach", "-i", echo)
	cmd.Stdin = strings.NewReader("hello-" + tag + "\n")
	out, _ := cmd.CombinedOutput() // ends when stdin closes
	if got := e.logOf(t, p, "echo", "got:hello-"+tag); !strings.Contains(got, "got:hello-"+tag) {
		t.Errorf("%s: attached stdin did not reach the recovered container: log %q, crictl %q", tag, got, out)
	}
}
