package vm

import (
	"context"
	"strconv"
	"syscall"
	"testing"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/magnetar-io/magnetar/internal/testutil"
	"github.com/magnetar-io/magnetar/sdk/backend"
	"github.com/magnetar-io/magnetar/sdk/kinds/vm/qemu"
)

// TestGuestStatsAndOOM boots one VM and checks the container operations
// forwarded to the guest (stats, pids, pause, update), the sandbox stats,
// and that an OOM kill in the guest reaches the EventSink.
func TestGuestStatsAndOOM(t *testing.T) {
	t.Parallel()
	kernel, initrd := requireBoot(t)
	ctx := context.Background()
	// Short health checks for the end of the test (timeouts stay
	// generous: a slow TCG guest must not be declared dead).
	b, err := New(Config{Driver: qemu.New(qemu.Options{}), Kernel: kernel, Initrd: initrd, VCPUs: 1, MemoryMiB: 256,
		HealthInterval: time.Second, HealthTimeout: 10 * time.Second, HealthFailures: 2})
	if err != nil {
		t.Fatal(err)
	}
	ooms := make(chan string, 10)
	sbx, err := b.Create(ctx, backend.SandboxConfig{ID: "monitor", Namespace: "default", Dir: t.TempDir(), PrivateNetwork: true,
		Events: sinkFunc(func(sb, cid string) { ooms <- sb + "/" + cid })})
	if err != nil {
		t.Fatal(err)
	}
	si, err := sbx.Start(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := sbx.Stop(ctx, time.Second); err != nil {
			t.Error(err)
		}
		if err := sbx.Delete(ctx); err != nil {
			t.Error(err)
		}
	}()

	// A running container: stats, pids, update, pause and resume.
	dir := t.TempDir()
	spec := testutil.BusyboxBundle(t, dir, "while true; do sleep 1; done")
	c, err := sbx.CreateContainer(ctx, backend.ContainerConfig{ID: "idle", Bundle: dir, Spec: spec})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Init().Start(ctx); err != nil {
		t.Fatal(err)
	}
	st, err := c.(backend.Stater).Stats(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("container stats %+v", *st)
	if st.MemoryUsageBytes == 0 || st.CPUUsageNanos == 0 || st.Pids == 0 {
		t.Errorf("container stats have zeros: %+v", *st)
	}
	pids, err := c.(backend.Pider).Pids(ctx)
	if err != nil || len(pids) == 0 {
		t.Errorf("pids = %v, %v", pids, err)
	}
	limit := int64(48 << 20)
	if err := c.(backend.Updater).Update(ctx, &specs.LinuxResources{Memory: &specs.LinuxMemory{Limit: &limit}}); err != nil {
		t.Fatal(err)
	}
	if st, err := c.(backend.Stater).Stats(ctx); err != nil || st.MemoryLimitBytes != uint64(limit) {
		t.Errorf("after update: limit %d, %v; want %d", st.MemoryLimitBytes, err, limit)
	}
	p := c.(backend.Pauser)
	if err := p.Pause(ctx); err != nil {
		t.Fatal(err)
	}
	if err := p.Resume(ctx); err != nil {
		t.Fatal(err)
	}

	// Sandbox stats: QEMU's host usage and the guest's memory.
	ss, info, err := sbx.(backend.SandboxStater).SandboxStats(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("sandbox stats %+v info %v", *ss, info)
	if ss.CPUUsageNanos == 0 || ss.MemoryUsageBytes == 0 {
		t.Errorf("sandbox stats have zeros: %+v", *ss)
	}
	total, _ := strconv.ParseUint(info["guest_mem_total_bytes"], 10, 64)
	avail, _ := strconv.ParseUint(info["guest_mem_available_bytes"], 10, 64)
	if total < 128<<20 || avail == 0 || avail > total {
		t.Errorf("guest memory total %d available %d", total, avail)
	}

	// A memory hog under a 32 MiB limit is OOM-killed in the guest.
	hdir := t.TempDir()
	hspec := testutil.BusyboxBundle(t, hdir, `x=a; while true; do x="$x$x"; done`)
	hlimit := int64(32 << 20)
	hspec.Linux.Resources = &specs.LinuxResources{Memory: &specs.LinuxMemory{Limit: &hlimit}}
	h, err := sbx.CreateContainer(ctx, backend.ContainerConfig{ID: "hog", Bundle: hdir, Spec: hspec})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := h.Init().Start(ctx); err != nil {
		t.Fatal(err)
	}
	wctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	ws, err := h.Init().Wait(wctx)
	if err != nil || ws.Code != 128+uint32(syscall.SIGKILL) {
		t.Errorf("hog exit = %+v, %v; want killed", ws, err)
	}
	select {
	case got := <-ooms:
		if got != "monitor/hog" {
			t.Errorf("OOM for %s, want monitor/hog", got)
		}
	case <-time.After(2 * time.Minute):
		t.Error("no OOM event for the hog")
	}
	for _, ctr := range []backend.Container{h, c} {
		_ = ctr.Init().Kill(ctx, syscall.SIGKILL, true)
		wctx, cancel := context.WithTimeout(ctx, time.Minute)
		_, _ = ctr.Init().Wait(wctx)
		cancel()
		if err := ctr.Init().Delete(ctx); err != nil {
			t.Error(err)
		}
		if err := ctr.Delete(ctx); err != nil {
			t.Error(err)
		}
	}

	// The agent stops answering (QEMU frozen): the health checker kills
	// the VM, so Wait returns.
	if err := syscall.Kill(int(si.Pid), syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	wctx, cancel = context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	if _, err := sbx.Wait(wctx); err != nil {
		_ = syscall.Kill(int(si.Pid), syscall.SIGCONT)
		t.Fatalf("sandbox still running with a frozen agent: %v", err)
	}
	m := sbx.(*sandbox).mon
	m.mu.Lock()
	dead := m.dead
	m.mu.Unlock()
	if dead == nil {
		t.Error("the VM ended but not through the health checker")
	}
	t.Logf("declared dead: %v", dead)
}
