package gvisor

import (
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

func mem(n int64) *specs.LinuxResources {
	return &specs.LinuxResources{Memory: &specs.LinuxMemory{Limit: &n}}
}

func cpu(quota int64, period, shares uint64) *specs.LinuxResources {
	return &specs.LinuxResources{CPU: &specs.LinuxCPU{Quota: &quota, Period: &period, Shares: &shares}}
}

// TestPodBound: the sandbox's cgroup is bounded by the larger of the pod's
// resources and its containers' together (when every container has a
// limit), memory plus the sentry's overhead.
func TestPodBound(t *testing.T) {
	const mib = 1 << 20
	for _, tc := range []struct {
		name       string
		pod        *specs.LinuxResources
		ctrs       map[string]*specs.LinuxResources
		mem, quota int64
		shares     uint64
	}{
		{"nothing", nil, nil, -1, -1, 0},
		{"pod only", mem(100 * mib), nil, 164 * mib, -1, 0},
		{"containers sum", nil, map[string]*specs.LinuxResources{"a": mem(64 * mib), "b": mem(32 * mib)}, 160 * mib, -1, 0},
		{"one unlimited container: the pod's", mem(100 * mib), map[string]*specs.LinuxResources{"a": mem(64 * mib), "b": nil}, 164 * mib, -1, 0},
		{"one unlimited container, no pod limit", nil, map[string]*specs.LinuxResources{"a": mem(64 * mib), "b": {}}, -1, -1, 0},
		{"containers above the pod", mem(100 * mib), map[string]*specs.LinuxResources{"a": mem(128 * mib)}, 192 * mib, -1, 0},
		{"containers below the pod", mem(100 * mib), map[string]*specs.LinuxResources{"a": mem(16 * mib)}, 164 * mib, -1, 0},
		{"quotas in other periods", nil, map[string]*specs.LinuxResources{"a": cpu(50000, 100000, 512), "b": cpu(10000, 50000, 256)}, -1, 70000, 768},
		{"pod quota larger", cpu(200000, 100000, 2048), map[string]*specs.LinuxResources{"a": cpu(50000, 100000, 512)}, -1, 200000, 2048},
		{"a container without quota", nil, map[string]*specs.LinuxResources{"a": cpu(50000, 100000, 2), "b": cpu(0, 100000, 2)}, -1, -1, 4},
	} {
		m, q, sh := podBound(tc.pod, tc.ctrs, 64*mib)
		if m != tc.mem || q != tc.quota || sh != tc.shares {
			t.Errorf("%s: bound = memory %d, quota %d, shares %d; want %d, %d, %d", tc.name, m, q, sh, tc.mem, tc.quota, tc.shares)
		}
	}
}

// TestMergeResources: an update replaces what it sets and keeps the rest.
func TestMergeResources(t *testing.T) {
	old := cpu(50000, 100000, 512)
	old.Memory = mem(64 << 20).Memory
	got := mergeResources(old, mem(96<<20))
	if *got.Memory.Limit != 96<<20 || got.CPU != old.CPU {
		t.Errorf("merged = %+v", got)
	}
	if *old.Memory.Limit != 64<<20 {
		t.Error("the old resources changed")
	}
	if got := mergeResources(nil, cpu(1000, 100000, 2)); got.CPU == nil || got.Memory != nil {
		t.Errorf("merged into nothing = %+v", got)
	}
}
