package vm

import (
	"fmt"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/containerd/cgroups/v3"
	"github.com/containerd/cgroups/v3/cgroup1"
	cg1 "github.com/containerd/cgroups/v3/cgroup1/stats"
	cgroupsv2 "github.com/containerd/cgroups/v3/cgroup2"
	cg2 "github.com/containerd/cgroups/v3/cgroup2/stats"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/magnetar-io/magnetar/internal/testutil"
)

// TestHostUsageOwnCgroup: a process in a cgroup of its own (as QEMU in
// the pod's cgroup) is measured by that cgroup.
func TestHostUsageOwnCgroup(t *testing.T) {
	testutil.RequireRoot(t, "cgroups")
	cmd := exec.Command("sleep", "600")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	pid := cmd.Process.Pid
	path := fmt.Sprintf("/magnetar-vmstats-test-%d", pid)
	if cgroups.Mode() == cgroups.Unified {
		m, err := cgroupsv2.NewManager("/sys/fs/cgroup", path, &cgroupsv2.Resources{})
		if err != nil {
			testutil.SkipOrFail(t, "cannot create a cgroup here: %v", err)
		}
		defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait(); _ = m.Delete() }()
		if err := m.AddProc(uint64(pid)); err != nil {
			testutil.SkipOrFail(t, "cannot move a process: %v", err)
		}
	} else {
		cg, err := cgroup1.New(cgroup1.StaticPath(path), &specs.LinuxResources{})
		if err != nil {
			testutil.SkipOrFail(t, "cannot create a cgroup here: %v", err)
		}
		defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait(); _ = cg.Delete() }()
		if err := cg.AddProc(uint64(pid)); err != nil {
			testutil.SkipOrFail(t, "cannot move a process: %v", err)
		}
	}
	st, src, err := hostUsage(pid, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(src, "cgroup ") || !strings.HasSuffix(src, path) {
		t.Errorf("source %q, want cgroup %s", src, path)
	}
	switch st.Raw.(type) {
	case *cg1.Metrics, *cg2.Metrics:
	default:
		t.Errorf("Raw is %T, want cgroup metrics", st.Raw)
	}
	if st.Pids != 1 {
		t.Errorf("pids = %d, want 1", st.Pids)
	}
}
