package vm

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/magnetar-io/magnetar/internal/testutil"
	"github.com/magnetar-io/magnetar/sdk/backend"
	"github.com/magnetar-io/magnetar/sdk/backend/backendtest"
	"github.com/magnetar-io/magnetar/sdk/engine"
	"github.com/magnetar-io/magnetar/sdk/kinds/vm/qemu"
)

// requireBoot skips (or fails with MAGNETAR_E2E_REQUIRED=1) unless the
// test can boot the guest: root, QEMU, busybox and the image of make guest.
func requireBoot(t *testing.T) (kernel, initrd string) {
	t.Helper()
	kernel, initrd = testutil.GuestImage(t)
	testutil.RequireRoot(t, "mounts")
	testutil.RequireRunc(t) // busybox-static for the bundles
	return kernel, initrd
}

func newBackend(t *testing.T, kernel, initrd string) *Backend {
	b, err := New(Config{Driver: qemu.New(qemu.Options{}), Kernel: kernel, Initrd: initrd, VCPUs: 1, MemoryMiB: 256, BootTimeout: 2 * time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

type busybox struct{}

func (busybox) Process(script string) *specs.Process {
	return &specs.Process{Args: []string{"/bin/sh", "-c", script}, Cwd: "/", Env: []string{"PATH=/bin"}}
}

func (busybox) Bundle(t *testing.T, dir, script string) *specs.Spec {
	return testutil.BusyboxBundle(t, dir, script)
}

func TestConformance(t *testing.T) {
	t.Parallel()
	kernel, initrd := requireBoot(t)
	backendtest.Run(t, func(t *testing.T) backend.Backend { return newBackend(t, kernel, initrd) }, busybox{}, backendtest.Parallel())
}

// TestSandboxLifecycle checks what the suite does not: the timings in the
// start info, that QEMU is gone after delete and that no mount is left.
func TestSandboxLifecycle(t *testing.T) {
	t.Parallel()
	kernel, initrd := requireBoot(t)
	ctx := context.Background()
	b := newBackend(t, kernel, initrd)
	stateDir := t.TempDir()
	e, err := engine.New(ctx, engine.Config{StateDir: stateDir, Backends: []backend.Backend{b}, StopTimeout: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	// A long id: the VM dir must move somewhere short.
	sb := "lifecycle-" + strings.Repeat("x", 64)
	if _, err := e.CreateSandbox(ctx, engine.SandboxSpec{ID: sb, Kind: Kind, Hostname: "vmtest", PrivateNetwork: true}); err != nil {
		t.Fatal(err)
	}
	st, err := e.StartSandbox(ctx, sb)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("sandbox pid %d info %v", st.Pid, st.Info)
	for _, k := range []string{"vm_start", "agent_ready", "setup", "network"} {
		if st.Info[k] == "" {
			t.Errorf("start info has no %s: %v", k, st.Info)
		}
	}
	if st.Pid == 0 {
		t.Fatal("no VMM pid")
	}
	comm, _ := os.ReadFile("/proc/" + strconv.Itoa(int(st.Pid)) + "/comm")
	if !strings.HasPrefix(string(comm), "qemu") {
		t.Errorf("pid %d is %q, want qemu", st.Pid, comm)
	}

	dir := t.TempDir()
	spec := testutil.BusyboxBundle(t, dir, "hostname; echo to-stderr >&2; exit 5")
	out := testutil.NewCapture(t, t.TempDir(), "out")
	errOut := testutil.NewCapture(t, t.TempDir(), "err")
	if _, err := e.CreateContainer(ctx, sb, engine.ContainerSpec{ID: "c1", Bundle: dir, Spec: spec,
		Stdio: backend.Stdio{Stdout: out.Path(), Stderr: errOut.Path()}}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.Start(ctx, sb, "c1", ""); err != nil {
		t.Fatal(err)
	}
	wctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	ws, err := e.Wait(wctx, sb, "c1", "")
	if err != nil || ws.Code != 5 {
		t.Fatalf("wait = %+v, %v; want 5", ws, err)
	}
	if got := out.Until("vmtest", 5*time.Second); !strings.Contains(got, "vmtest") {
		t.Errorf("stdout %q, want the pod hostname", got)
	}
	if got := errOut.Until("to-stderr", 5*time.Second); !strings.Contains(got, "to-stderr") {
		t.Errorf("stderr %q", got)
	}
	if _, err := e.Delete(ctx, sb, "c1", ""); err != nil {
		t.Fatal(err)
	}

	if err := e.DeleteSandbox(ctx, sb); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(int(st.Pid), 0); !errors.Is(err, syscall.ESRCH) {
		t.Errorf("qemu %d still exists: %v", st.Pid, err)
	}
	mi, _ := os.ReadFile("/proc/self/mountinfo")
	if strings.Contains(string(mi), stateDir) {
		t.Errorf("mounts left under %s:\n%s", stateDir, mi)
	}
	if _, err := os.Stat(stateDir + "/sandboxes/" + sb); !os.IsNotExist(err) {
		t.Errorf("sandbox dir left: %v", err)
	}
	// Other VMs (other tests, other processes) may run at the same time:
	// look only for this one's work dir, found by its QEMU pid.
	root := filepath.Join(DefaultRunDir, "vm")
	entries, _ := os.ReadDir(root)
	for _, en := range entries {
		pid, err := os.ReadFile(filepath.Join(root, en.Name(), "qemu.pid"))
		if err == nil && strings.TrimSpace(string(pid)) == strconv.Itoa(int(st.Pid)) {
			t.Errorf("vm dir %s left", en.Name())
		}
	}
}

// HasShell: busybox has sh, cat, tty and stty.
func (busybox) HasShell() bool { return true }

// Tick prints a line every tenth of a second.
func (busybox) Tick() string { return "while :; do echo tick; sleep 0.1; done" }
