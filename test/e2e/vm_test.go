package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	runtime "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// requireGuest skips (or fails with MAGNETAR_E2E_REQUIRED=1) unless QEMU
// and the guest image of "make guest" are present.
func (e *env) requireGuest(t *testing.T) {
	t.Helper()
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		skipOrFail(t, "no qemu-system-x86_64 in PATH (make deps)")
	}
	for _, f := range []string{"vmlinux", "initramfs.cpio.gz"} {
		if _, err := os.Stat(filepath.Join(e.guestDir(), f)); err != nil {
			skipOrFail(t, "guest image missing: run make guest")
		}
	}
}

func TestVMPod(t *testing.T) {
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
