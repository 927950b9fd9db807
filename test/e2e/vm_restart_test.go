package e2e

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	goruntime "runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	runtime "k8s.io/cri-api/pkg/apis/runtime/v1"

	sandboxv1 "github.com/magnetar-io/magnetar/gen/magnetar/sandbox/v1"
	"github.com/magnetar-io/magnetar/internal/harness"
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

// TestVMSandboxerRestart restarts magnetar-sandboxer under a running VM
// pod sized from its resources. The restarted sandboxer reconnects to the
// VM's agent: the pod stays READY with the same QEMU, the container that
// ran before is reported exited and no longer runs in the guest, a new
// container runs and logs, and Controller.Wait still reports the VM's
// death. QEMU runs in a child of the pod's cgroup parent; removing the pod
// leaves no QEMU, cgroup or state.
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

	survivor := e.startContainer(t, p, "survivor", "echo before restart; sleep 600")
	if got := e.logOf(t, p, "survivor", "before restart"); !strings.Contains(got, "before restart") {
		t.Fatalf("survivor did not start: log %q", got)
	}

	e.stopSandboxer()
	if err := e.startSandboxer(); err != nil {
		t.Fatal(err)
	}
	// containerd reports the container of the dead task connection
	// exited (255 when its task Wait failed, 137 from the shim's delete);
	// the restarted sandboxer killed it in the guest when it reconnected.
	if st := e.waitExited(t, survivor); st.ExitCode != 137 && st.ExitCode != 255 {
		t.Errorf("container after the sandboxer restart: exit %d, want 137 or 255", st.ExitCode)
	}
	ps, err := e.rt.PodSandboxStatus(ctxT(t), &runtime.PodSandboxStatusRequest{PodSandboxId: p.id})
	if err != nil || ps.Status.State != runtime.PodSandboxState_SANDBOX_READY {
		t.Fatalf("pod after the sandboxer restart: %v, %v; want ready", ps.GetStatus().GetState(), err)
	}
	sb, err = e.api().GetSandbox(ctxT(t), &sandboxv1.GetSandboxRequest{SandboxId: p.id})
	if err != nil || int(sb.GetSandbox().GetPid()) != pid {
		t.Errorf("QEMU pid after the restart: %v, %v; want %d", sb.GetSandbox().GetPid(), err, pid)
	}
	if err := syscall.Kill(pid, 0); err != nil {
		t.Fatalf("QEMU %d after the restart: %v", pid, err)
	}

	// A new container runs in the guest's PID namespace: ps shows every
	// process of the guest, and the survivor is not among them.
	next := e.start(t, p, &runtime.ContainerConfig{
		Metadata: &runtime.ContainerMetadata{Name: "after-restart"},
		Image:    &runtime.ImageSpec{Image: harness.BusyboxImage},
		Command:  []string{"sh", "-c", "echo served after restart; ps -o pid,args; echo ps-done"},
		LogPath:  "after-restart.log",
		Linux: &runtime.LinuxContainerConfig{SecurityContext: &runtime.LinuxContainerSecurityContext{
			NamespaceOptions: &runtime.NamespaceOption{Network: runtime.NamespaceMode_POD, Pid: runtime.NamespaceMode_NODE, Ipc: runtime.NamespaceMode_POD},
		}},
	})
	if st := e.waitExited(t, next); st.ExitCode != 0 {
		t.Errorf("container started after the restart: exit %d", st.ExitCode)
	}
	got := e.logOf(t, p, "after-restart", "ps-done")
	if !strings.Contains(got, "served after restart") || !strings.Contains(got, "ps-done") {
		t.Errorf("container started after the restart logged %q", got)
	}
	if !strings.Contains(got, " 1 /init") {
		t.Errorf("ps in the guest's PID namespace does not show the agent as pid 1:\n%s", got)
	}
	if strings.Contains(got, "sleep 600") {
		t.Errorf("the container from before the restart still runs in the guest:\n%s", got)
	}

	// Controller.Wait (re-issued by containerd) reports the VM's death.
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatalf("kill QEMU %d: %v", pid, err)
	}
	state := e.waitPodNotReady(t, p, 60*time.Second)
	if state != runtime.PodSandboxState_SANDBOX_NOTREADY {
		t.Errorf("pod state after QEMU was killed = %s, want NOTREADY", state)
	}

	e.removePod(t, p)
	for range 100 {
		if err := syscall.Kill(pid, 0); errors.Is(err, syscall.ESRCH) {
			break
		}
		if data, _ := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid)); strings.Contains(string(data), ") Z ") {
			break // killed, waiting for its reaper
		}
		time.Sleep(100 * time.Millisecond)
	}
	if data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid)); err == nil && !strings.Contains(string(data), ") Z ") {
		t.Errorf("QEMU %d still runs after the pod was removed", pid)
	}
	if left := cgroupLeft(cg); len(left) > 0 {
		t.Errorf("QEMU's cgroup left after the pod was removed: %v", left)
	}
	if _, err := os.Stat(filepath.Join(e.stateDir, "sandboxes", p.id)); !os.IsNotExist(err) {
		t.Errorf("state of the pod remains after removal: %v", err)
	}
}
