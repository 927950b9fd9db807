package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	sandboxv1 "github.com/magnetar-io/magnetar/gen/magnetar/sandbox/v1"
	"github.com/magnetar-io/magnetar/internal/testutil"
)

// poolQEMUs returns the QEMU processes of warm-pool VMs: VM name
// ("pool-<hex>") -> pid.
func poolQEMUs(t *testing.T) map[string]int {
	t.Helper()
	m := map[string]int{}
	ents, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		var pid int
		if _, err := fmt.Sscan(e.Name(), &pid); err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil || !strings.Contains(string(b), "qemu") {
			continue
		}
		for _, a := range strings.Split(string(b), "\x00") {
			if name, ok := strings.CutPrefix(a, "magnetar-pool-"); ok {
				name, _, _ = strings.Cut(name, ",")
				m["pool-"+name] = pid
			}
		}
	}
	return m
}

// TestVMWarmPool: with a warm pool of one VM configured, a magnetar-vm
// pod adopts the pre-booted VM (the sandbox info names it) and its pod
// network works as a cold-booted VM's; the pool boots a replacement. A
// crashed worker's successor ends the pooled VM but keeps the claimed
// one, whose pod still runs containers; removing the pod ends its VM and
// leaves no tap or pool directory; a sandboxer that stops ends its pooled
// VMs.
func TestVMWarmPool(t *testing.T) {
	e := setup(t)
	e.requireGuest(t)
	cfg := filepath.Join(e.base, "warm-pool.toml")
	if err := os.WriteFile(cfg, []byte("version = 1\n[backends.vm.pool]\n[[backends.vm.pool.classes]]\ncount = 1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	e.stopSandboxer()
	e.sbConfig = cfg
	if err := e.startSandboxer(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		e.stopSandboxer()
		if left := poolQEMUs(t); len(left) > 0 {
			t.Errorf("pooled VMs left after the sandboxer stopped: %v", left)
		}
		e.sbConfig = ""
		if err := e.startSandboxer(); err != nil {
			t.Errorf("restart the sandboxer without the pool: %v", err)
		}
	})
	before := strings.Count(e.sbLog.String(), "warm vm ready")
	readyCount := func() int { return strings.Count(e.sbLog.String(), "warm vm ready") - before }
	testutil.Eventually(t, 3*time.Minute, func() bool { return readyCount() >= 1 }, "no warm VM became ready:\n%s", e.sbLog)

	vmPod := e.runPodWith(t, "magnetar-vm", false)
	sb, err := e.api().GetSandbox(ctxT(t), &sandboxv1.GetSandboxRequest{SandboxId: vmPod.id})
	if err != nil {
		t.Fatal(err)
	}
	claimed := sb.GetSandbox().GetInfo()["warm_vm"]
	if !strings.HasPrefix(claimed, "pool-") {
		t.Fatalf("the pod did not adopt a warm VM: info %v", sb.GetSandbox().GetInfo())
	}
	t.Logf("claimed %s in %s (setup %s)", claimed, sb.GetSandbox().GetInfo()["claim_total"], sb.GetSandbox().GetInfo()["setup"])
	netns := e.assertVMPodNetwork(t, vmPod)

	// The pool boots a replacement.
	testutil.Eventually(t, 3*time.Minute, func() bool { return readyCount() >= 2 }, "the pool did not refill:\n%s", e.sbLog)
	// A second pod takes the replacement; stopping and removing it ends
	// its VM and leaves nothing, as for a cold-booted VM.
	pod2 := e.runPodWith(t, "magnetar-vm", false)
	sb2, err := e.api().GetSandbox(ctxT(t), &sandboxv1.GetSandboxRequest{SandboxId: pod2.id})
	if err != nil {
		t.Fatal(err)
	}
	claimed2 := sb2.GetSandbox().GetInfo()["warm_vm"]
	if !strings.HasPrefix(claimed2, "pool-") || claimed2 == claimed {
		t.Fatalf("the second pod did not adopt the pool's replacement VM: info %v", sb2.GetSandbox().GetInfo())
	}
	e.startContainer(t, pod2, "c", "echo in-second-pod")
	if got := e.logOf(t, pod2, "c", "in-second-pod"); !strings.Contains(got, "in-second-pod") {
		t.Errorf("second pod's container log %q", got)
	}
	t0 := time.Now()
	e.removePod(t, pod2)
	t.Logf("second pod removed in %s", time.Since(t0))
	if _, ok := poolQEMUs(t)[claimed2]; ok {
		t.Errorf("the VM %s outlived its removed pod", claimed2)
	}
	if _, err := os.Stat(filepath.Join(e.runDir, "vmpool", strings.TrimPrefix(claimed2, "pool-"))); !os.IsNotExist(err) {
		t.Errorf("the VM's directory remains after the pod's removal: %v", err)
	}
	testutil.Eventually(t, 3*time.Minute, func() bool { return readyCount() >= 3 }, "the pool did not refill:\n%s", e.sbLog)

	vms := poolQEMUs(t)
	if _, ok := vms[claimed]; !ok || len(vms) != 2 {
		t.Fatalf("pool VMs = %v, want the claimed %s and a pooled one", vms, claimed)
	}
	var pooledPid int
	for name, pid := range vms {
		if name != claimed {
			pooledPid = pid
		}
	}

	// A crash: the next worker ends the pooled VM, keeps the pod's.
	old := e.workerPid(t)
	if err := syscall.Kill(old, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	e.waitNewWorker(t, old, vmPod)
	testutil.Eventually(t, time.Minute, func() bool { return !alive(pooledPid) }, "the pooled VM %d survived the crash", pooledPid)
	if _, ok := poolQEMUs(t)[claimed]; !ok {
		t.Fatalf("the claimed VM %s did not survive the crash", claimed)
	}
	id := e.startContainer(t, vmPod, "after-crash", "echo still-here")
	if st := e.waitExited(t, id); st.ExitCode != 0 {
		t.Errorf("container after the crash: exit %d", st.ExitCode)
	}
	if got := e.logOf(t, vmPod, "after-crash", "still-here"); !strings.Contains(got, "still-here") {
		t.Errorf("container after the crash: log %q", got)
	}

	t0 = time.Now()
	e.removePod(t, vmPod)
	t.Logf("pod removed in %s", time.Since(t0))
	testutil.Eventually(t, time.Minute, func() bool { _, ok := poolQEMUs(t)[claimed]; return !ok }, "the claimed VM %s outlived its pod", claimed)
	if _, err := os.Stat(filepath.Join(e.runDir, "vmpool", strings.TrimPrefix(claimed, "pool-"))); !os.IsNotExist(err) {
		t.Errorf("the claimed VM's directory remains after the pod's removal: %v", err)
	}
	e.assertNoTap(t, netns)
}
