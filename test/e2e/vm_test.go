package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	runtime "k8s.io/cri-api/pkg/apis/runtime/v1"

	sandboxv1 "github.com/magnetar-io/magnetar/gen/magnetar/sandbox/v1"
	"github.com/magnetar-io/magnetar/internal/harness"
	"github.com/magnetar-io/magnetar/internal/testutil"
)

// requireGuest skips (or fails with MAGNETAR_E2E_REQUIRED=1) unless QEMU
// and the guest image of "make guest" are present.
func (e *env) requireGuest(t *testing.T) {
	t.Helper()
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		testutil.SkipOrFail(t, "no qemu-system-x86_64 in PATH (make deps)")
	}
	for _, f := range []string{"vmlinux", "initramfs.cpio.gz"} {
		if _, err := os.Stat(filepath.Join(e.guestDir(), f)); err != nil {
			testutil.SkipOrFail(t, "guest image missing: run make guest")
		}
	}
}

func TestVMPod(t *testing.T) {
	t.Parallel() // with the other VM tests, at the end: each keeps about one core busy under TCG
	e := setup(t)
	e.requireGuest(t)
	p := e.runPodWith(t, "magnetar-vm", false)

	cid := e.startContainer(t, p, "hello", "echo hello from the vm; hostname; exit 3")
	st := e.waitExited(t, cid)
	if st.ExitCode != 3 {
		t.Errorf("exit code = %d, want 3", st.ExitCode)
	}
	got := e.logOf(t, p, "hello", "hello from the vm")
	if !strings.Contains(got, "hello from the vm") {
		t.Errorf("container log lacks the output:\n%s", got)
	}

	long := e.startContainer(t, p, "sleeper", "sleep 600")
	ex, err := e.rt.ExecSync(ctxT(t), &runtime.ExecSyncRequest{ContainerId: long, Cmd: []string{"sh", "-c", "echo exec-out; echo exec-err >&2; exit 5"}, Timeout: 60})
	if err != nil {
		t.Fatalf("ExecSync: %v", err)
	}
	if ex.ExitCode != 5 || !strings.Contains(string(ex.Stdout), "exec-out") || !strings.Contains(string(ex.Stderr), "exec-err") {
		t.Errorf("ExecSync = code %d stdout %q stderr %q; want 5, exec-out, exec-err", ex.ExitCode, ex.Stdout, ex.Stderr)
	}
	if _, err := e.rt.StopContainer(ctxT(t), &runtime.StopContainerRequest{ContainerId: long, Timeout: 2}); err != nil {
		t.Fatalf("StopContainer: %v", err)
	}
	if st := e.waitExited(t, long); st.ExitCode == 0 {
		t.Errorf("stopped container exit code = 0, want a signal status")
	}
}

// TestVMDeathReported kills a pod's QEMU: containerd must see the pod
// exit (Controller.Wait returns) and report it NOTREADY, and removing the
// pod leaves no QEMU behind.
func TestVMDeathReported(t *testing.T) {
	t.Parallel() // with the other VM tests, at the end: each keeps about one core busy under TCG
	e := setup(t)
	e.requireGuest(t)
	p := e.runPodWith(t, "magnetar-vm", false)
	sb, err := e.api().GetSandbox(ctxT(t), &sandboxv1.GetSandboxRequest{SandboxId: p.id})
	if err != nil {
		t.Fatal(err)
	}
	pid := int(sb.GetSandbox().GetPid())
	if pid <= 0 {
		t.Fatalf("vm sandbox reports no QEMU pid: %v", sb.GetSandbox())
	}
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatalf("kill QEMU %d: %v", pid, err)
	}
	state := e.waitPodNotReady(t, p, 30*time.Second)
	if state != runtime.PodSandboxState_SANDBOX_NOTREADY {
		t.Fatalf("pod state after QEMU was killed = %s, want NOTREADY", state)
	}
	e.removePod(t, p)
	if _, err := os.Stat(fmt.Sprintf("/proc/%d", pid)); err == nil {
		if data, _ := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid)); !strings.Contains(string(data), ") Z ") {
			t.Errorf("QEMU %d still exists after the pod was removed", pid)
		}
	}
}

// TestVMContainersShareLocalhost: two containers of one VM pod reach each
// other over localhost inside the guest.
func TestVMContainersShareLocalhost(t *testing.T) {
	t.Parallel() // with the other VM tests, at the end: each keeps about one core busy under TCG
	e := setup(t)
	e.requireGuest(t)
	p := e.runPodWith(t, "magnetar-vm", false)
	e.startContainer(t, p, "server", "nc -l -p 8080")
	client := e.startContainer(t, p, "client", "for i in $(seq 1 100); do echo ping-in-the-vm | nc 127.0.0.1 8080 && exit 0; sleep 0.2; done; exit 1")
	if st := e.waitExited(t, client); st.ExitCode != 0 {
		t.Fatalf("client exit code = %d, want 0", st.ExitCode)
	}
	if got := e.logOf(t, p, "server", "ping-in-the-vm"); !strings.Contains(got, "ping-in-the-vm") {
		t.Errorf("server log = %q, want the client's message", got)
	}
}

// TestVMVolume: a file a VM container writes through a volume (a host
// directory, shared into the guest) appears on the host.
func TestVMVolume(t *testing.T) {
	t.Parallel() // with the other VM tests, at the end: each keeps about one core busy under TCG
	e := setup(t)
	e.requireGuest(t)
	p := e.runPodWith(t, "magnetar-vm", false)
	vol := t.TempDir()
	cid := e.start(t, p, &runtime.ContainerConfig{
		Metadata: &runtime.ContainerMetadata{Name: "writer"},
		Image:    &runtime.ImageSpec{Image: harness.BusyboxImage},
		Command:  []string{"sh", "-c", "echo written in the vm > /data/out.txt"},
		LogPath:  "writer.log",
		Mounts:   []*runtime.Mount{{ContainerPath: "/data", HostPath: vol}},
	})
	if st := e.waitExited(t, cid); st.ExitCode != 0 {
		t.Fatalf("writer exit code = %d, log %q", st.ExitCode, e.logOf(t, p, "writer", "-"))
	}
	data, err := os.ReadFile(filepath.Join(vol, "out.txt"))
	if err != nil || string(data) != "written in the vm\n" {
		t.Errorf("file on the host = %q, %v; want the container's line", data, err)
	}
}

// waitPodNotReady polls CRI until pod p is NOTREADY or timeout passes, and
// returns the last state seen.
func (e *env) waitPodNotReady(t *testing.T, p *pod, timeout time.Duration) runtime.PodSandboxState {
	t.Helper()
	state := runtime.PodSandboxState_SANDBOX_READY
	testutil.Poll(timeout, func() bool {
		ps, err := e.rt.PodSandboxStatus(ctxT(t), &runtime.PodSandboxStatusRequest{PodSandboxId: p.id})
		if err != nil {
			t.Fatal(err)
		}
		state = ps.Status.State
		return state == runtime.PodSandboxState_SANDBOX_NOTREADY
	})
	return state
}
