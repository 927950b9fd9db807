package vm

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	taskapi "github.com/containerd/containerd/api/runtime/task/v3"
	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"

	"github.com/magnetar-io/magnetar/internal/testutil"
	"github.com/magnetar-io/magnetar/sdk/backend"
)

// cgroupDirs returns the directories of cgroup path in every mounted
// hierarchy (v2: the unified one; v1: one per controller).
func cgroupDirs(path string) []string {
	if _, err := os.Stat("/sys/fs/cgroup/cgroup.controllers"); err == nil {
		return []string{filepath.Join("/sys/fs/cgroup", path)}
	}
	var out []string
	ents, _ := os.ReadDir("/sys/fs/cgroup")
	for _, e := range ents {
		if e.Name() != "unified" {
			out = append(out, filepath.Join("/sys/fs/cgroup", e.Name(), path))
		}
	}
	return out
}

// inCgroup reports whether pid is in cgroup path in some hierarchy with
// controllers (v2's unified one, or a v1 controller).
func inCgroup(t *testing.T, pid int, path string) bool {
	t.Helper()
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(strings.TrimSpace(string(data)), "\n") {
		f := strings.SplitN(l, ":", 3)
		if len(f) == 3 && f[2] == path && (f[1] == "" || !strings.HasPrefix(f[1], "name=")) {
			return true
		}
	}
	return false
}

// TestRecoverReconnects boots a VM sized from its resources in a child of
// its cgroup parent, runs a container, then recovers a second sandbox
// object from State() as a restarted sandboxer would: the old container
// is ended in the guest, a new one runs, and deleting the sandbox leaves
// no QEMU and no cgroup.
func TestRecoverReconnects(t *testing.T) {
	t.Parallel()
	kernel, initrd := requireBoot(t)
	ctx := context.Background()
	b := newBackend(t, kernel, initrd)
	b.cfg.MemoryOverheadMiB = 64
	parent := fmt.Sprintf("/magnetar-vmtest-%d", os.Getpid())
	t.Cleanup(func() {
		for _, d := range cgroupDirs(parent) {
			_ = os.Remove(d)
		}
	})
	id := fmt.Sprintf("recover-%d", time.Now().UnixNano())
	limit := int64(200 << 20)
	cfg := backend.SandboxConfig{
		ID: id, Namespace: "magnetar-test", Dir: filepath.Join(t.TempDir(), "sb"), Hostname: "recovered", PrivateNetwork: true,
		CgroupParent: parent,
		Resources:    memRes(limit),
	}
	if err := os.MkdirAll(cfg.Dir, 0o700); err != nil {
		t.Fatal(err)
	}
	s1, err := b.Create(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	st, err := s1.Start(ctx)
	if err != nil {
		t.Fatal(err)
	}
	pid := int(st.Pid)
	deleted := false
	t.Cleanup(func() {
		if !deleted {
			_ = s1.Delete(context.Background())
		}
	})
	cg := parent + "/magnetar-vm-" + id
	if !inCgroup(t, pid, cg) {
		data, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
		t.Errorf("QEMU %d is not in %s:\n%s", pid, cg, data)
	}
	cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if args := strings.Split(string(cmdline), "\x00"); !strings.Contains(strings.Join(args, " "), "-m 264M") {
		t.Errorf("QEMU memory not sized from the 200 MiB limit + 64 MiB overhead: %q", args)
	}

	bundle := t.TempDir()
	spec := testutil.BusyboxBundle(t, bundle, "sleep 600")
	old, err := s1.CreateContainer(ctx, backend.ContainerConfig{ID: "old", Bundle: bundle, Spec: spec})
	if err != nil {
		t.Fatal(err)
	}
	oldPid, err := old.Init().Start(ctx)
	if err != nil {
		t.Fatal(err)
	}
	state, err := s1.State()
	if err != nil {
		t.Fatal(err)
	}

	// The sandboxer "dies": its session with the agent ends. The guest
	// notices the disconnect only when the host stays away for a moment
	// (docs/guest.md, "EOF / reconnect").
	s1.(*sandbox).closeAgent()
	time.Sleep(1500 * time.Millisecond)

	rctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	s2, err := b.Recover(rctx, cfg, state)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if !deleted {
			_ = s2.Delete(context.Background())
		}
	})
	// The container that ran before the restart was ended in the guest.
	rc, err := s2.(backend.ContainerRecoverer).RecoverContainer(ctx, backend.ContainerConfig{ID: "old", Bundle: bundle}, oldPid)
	if err != nil {
		t.Fatal(err)
	}
	wctx, wcancel := context.WithTimeout(ctx, time.Minute)
	defer wcancel()
	if ws, err := rc.Init().Wait(wctx); err != nil || ws.Code != 128+uint32(syscall.SIGKILL) {
		t.Errorf("old container after recovery: %+v, %v; want killed (137)", ws, err)
	}
	tc, err := s2.(*sandbox).taskClient()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tc.State(s2.(*sandbox).ns(ctx), &taskapi.StateRequest{ID: "old"}); !errdefs.IsNotFound(errgrpc.ToNative(err)) {
		t.Errorf("old container still known in the guest: %v", err)
	}
	if err := rc.Delete(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(cfg.Dir, "shared", "old")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("shared dir of the old container left: %v", err)
	}
	if _, err := s2.(backend.ContainerRecoverer).RecoverContainer(ctx, backend.ContainerConfig{ID: "never"}, 1); !errdefs.IsNotFound(err) {
		t.Errorf("recover an unknown container: %v, want NotFound", err)
	}

	// A new container runs through the recovered sandbox.
	out := testutil.NewCapture(t, t.TempDir(), "out")
	nb := t.TempDir()
	c2, err := s2.CreateContainer(ctx, backend.ContainerConfig{ID: "new", Bundle: nb,
		Spec: testutil.BusyboxBundle(t, nb, "echo after-recover; hostname"), Stdio: backend.Stdio{Stdout: out.Path()}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c2.Init().Start(ctx); err != nil {
		t.Fatal(err)
	}
	if ws, err := c2.Init().Wait(wctx); err != nil || ws.Code != 0 {
		t.Errorf("new container: %+v, %v; want exit 0", ws, err)
	}
	if got := out.Until("recovered", 5*time.Second); !strings.Contains(got, "after-recover") || !strings.Contains(got, "recovered") {
		t.Errorf("new container's output %q, want after-recover and the pod's hostname", got)
	}
	if err := c2.Init().Delete(ctx); err != nil {
		t.Fatal(err)
	}
	if err := c2.Delete(ctx); err != nil {
		t.Fatal(err)
	}
	// The sandbox still runs: Wait blocks.
	sctx, scancel := context.WithTimeout(ctx, 200*time.Millisecond)
	defer scancel()
	if ws, err := s2.Wait(sctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("recovered sandbox Wait = %+v, %v; want it to block", ws, err)
	}

	deleted = true
	if err := s2.Delete(ctx); err != nil {
		t.Fatal(err)
	}
	testutil.Poll(5*time.Second, func() bool { return errors.Is(syscall.Kill(pid, 0), syscall.ESRCH) })
	if err := syscall.Kill(pid, 0); !errors.Is(err, syscall.ESRCH) {
		t.Errorf("QEMU %d still exists after delete: %v", pid, err)
	}
	for _, d := range cgroupDirs(cg) {
		if _, err := os.Stat(d); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("cgroup %s left: %v", d, err)
		}
	}
	if _, err := os.Stat(cfg.Dir + "/shared"); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("shared dir left: %v", err)
	}
}
