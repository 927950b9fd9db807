package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	runtime "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/magnetar-io/magnetar/internal/testutil"
)

// TestVMMetricsAndOOM checks through containerd's CRI what a VM pod
// reports: an OOM kill in the guest gives exit 137 with reason OOMKilled,
// crictl stats and pod stats show nonzero usage, and a container's memory
// limit can be updated (in its guest cgroup).
func TestVMMetricsAndOOM(t *testing.T) {
	t.Parallel() // with the other VM tests, at the end: each keeps about one core busy under TCG
	e := setup(t)
	e.requireGuest(t)
	p := e.runPodWith(t, "magnetar-vm", false)
	ctx := ctxT(t)

	hog := e.startLimited(t, p, "hog", `x=a; while true; do x="$x$x"; done`, 32<<20)
	if st := e.waitExited(t, hog); st.ExitCode != 137 || st.Reason != "OOMKilled" {
		t.Errorf("OOM container in the VM: exit %d reason %q; want 137 OOMKilled", st.ExitCode, st.Reason)
	}
	// The reason can also come from the exit status plus the guest
	// cgroup's oom_kill counter (CRI reads the task's metrics): check that
	// the guest's OOM event itself reached containerd as /tasks/oom.
	logFile := filepath.Join(e.ctrd.BaseDir(), "logs", "containerd.log")
	var sawOOM bool
	testutil.Poll(60*time.Second, func() bool {
		data, _ := os.ReadFile(logFile)
		for _, l := range strings.Split(string(data), "\n") {
			if strings.Contains(l, "TaskOOM event") && strings.Contains(l, hog) {
				sawOOM = true
			}
		}
		return sawOOM
	})
	if !sawOOM {
		t.Errorf("no TaskOOM event for %s in %s", hog, logFile)
	}

	cid := e.startLimited(t, p, "limited", "while true; do sleep 1; done", 64<<20)
	if _, err := e.rt.UpdateContainerResources(ctx, &runtime.UpdateContainerResourcesRequest{
		ContainerId: cid, Linux: &runtime.LinuxContainerResources{MemoryLimitInBytes: 96 << 20},
	}); err != nil {
		t.Fatalf("UpdateContainerResources: %v", err)
	}
	ex, err := e.rt.ExecSync(ctx, &runtime.ExecSyncRequest{ContainerId: cid, Cmd: []string{"sh", "-c",
		// No cgroup namespace (the host is not on cgroup v2): find the
		// container's own cgroup in the guest's tree.
		`cat "/sys/fs/cgroup$(cut -d: -f3 /proc/self/cgroup)/memory.max"`}, Timeout: 60})
	if err != nil {
		t.Fatalf("ExecSync: %v", err)
	}
	if got := strings.TrimSpace(string(ex.Stdout)); got != fmt.Sprint(96<<20) {
		t.Errorf("memory limit seen in the guest container = %q (stderr %q), want %d", got, ex.Stderr, 96<<20)
	}

	// crictl stats (CRI ContainerStats, collected from the guest's
	// cgroup through the Task API's Stats).
	var mem, cpu uint64
	testutil.Poll(30*time.Second, func() bool {
		out, err := e.ctrd.Crictl(ctx, "stats", "-o", "json", "--id", cid)
		if err != nil {
			t.Fatalf("crictl stats: %v\n%s", err, out)
		}
		mem, cpu = crictlStats(t, out)
		return mem > 0 && cpu > 0
	})
	if mem == 0 || cpu == 0 {
		t.Errorf("crictl stats of a VM container: working set %d, cpu %d; want nonzero", mem, cpu)
	}

	// Pod stats (Controller.Metrics: QEMU's host usage).
	var pst *runtime.PodSandboxStats
	testutil.Poll(30*time.Second, func() bool {
		resp, err := e.rt.PodSandboxStats(ctx, &runtime.PodSandboxStatsRequest{PodSandboxId: p.id})
		if err != nil {
			t.Fatalf("PodSandboxStats: %v", err)
		}
		pst = resp.Stats
		return pst.GetLinux().GetMemory().GetWorkingSetBytes().GetValue() > 0 && pst.GetLinux().GetCpu().GetUsageCoreNanoSeconds().GetValue() > 0
	})
	if pst.GetLinux().GetMemory().GetWorkingSetBytes().GetValue() == 0 || pst.GetLinux().GetCpu().GetUsageCoreNanoSeconds().GetValue() == 0 {
		t.Errorf("VM pod stats have no usage: %v", pst)
	}
}

// crictlStats returns the working set and CPU usage of the one container
// in `crictl stats -o json` output.
func crictlStats(t *testing.T, out []byte) (mem, cpu uint64) {
	t.Helper()
	var r struct {
		Stats []struct {
			CPU struct {
				UsageCoreNanoSeconds struct{ Value string } `json:"usageCoreNanoSeconds"`
			} `json:"cpu"`
			Memory struct {
				WorkingSetBytes struct{ Value string } `json:"workingSetBytes"`
			} `json:"memory"`
		} `json:"stats"`
	}
	if err := json.Unmarshal(out, &r); err != nil {
		t.Fatalf("crictl stats output: %v\n%s", err, out)
	}
	if len(r.Stats) != 1 {
		return 0, 0
	}
	mem, _ = strconv.ParseUint(r.Stats[0].Memory.WorkingSetBytes.Value, 10, 64)
	cpu, _ = strconv.ParseUint(r.Stats[0].CPU.UsageCoreNanoSeconds.Value, 10, 64)
	return mem, cpu
}
