package cgpath_test

import (
	"os"
	"testing"

	"github.com/containerd/cgroups/v3"
	"github.com/containerd/cgroups/v3/cgroup1"

	"github.com/magnetar-io/magnetar/sdk/kinds/internal/cgpath"
)

// TestV1PidPathMatchesCgroup1: the cached lookup gives, for every
// subsystem, the path cgroup1.PidPath gives (the library's own reading of
// mountinfo), and a process that does not exist is an error.
func TestV1PidPathMatchesCgroup1(t *testing.T) {
	if cgroups.Mode() == cgroups.Unified {
		t.Skip("cgroup v2 only host: no v1 hierarchies to compare") // nothing to test here, not a missing prerequisite
	}
	subsystems, err := cgpath.V1Hierarchy()
	if err != nil {
		t.Fatal(err)
	}
	if len(subsystems) == 0 {
		t.Fatal("no cgroup v1 subsystems found")
	}
	pid := os.Getpid()
	ours, theirs := cgpath.V1PidPath(pid), cgroup1.PidPath(pid)
	for _, s := range subsystems {
		want, werr := theirs(s.Name())
		got, gerr := ours(s.Name())
		if got != want || (werr == nil) != (gerr == nil) {
			t.Errorf("%s: got %q (%v), cgroup1.PidPath gives %q (%v)", s.Name(), got, gerr, want, werr)
		}
	}
	if _, err := cgroup1.Load(ours, cgroup1.WithHiearchy(cgpath.V1Hierarchy)); err != nil {
		t.Errorf("load this process's cgroup: %v", err)
	}
	if _, err := cgpath.V1PidPath(1 << 30)(cgroup1.Memory); err == nil {
		t.Error("a process that does not exist has a cgroup path")
	}
}
