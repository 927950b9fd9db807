package vm

import (
	"context"
	"runtime"
	"strings"
	"testing"

	"github.com/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/magnetar-io/magnetar/sdk/backend"
	"github.com/magnetar-io/magnetar/sdk/kinds/vm/qemu"
)

func cpuRes(quota int64, period uint64) *specs.LinuxResources {
	c := &specs.LinuxCPU{Quota: &quota}
	if period > 0 {
		c.Period = &period
	}
	return &specs.LinuxResources{CPU: c}
}

func memRes(limit int64) *specs.LinuxResources {
	return &specs.LinuxResources{Memory: &specs.LinuxMemory{Limit: &limit}}
}

func TestSize(t *testing.T) {
	defaults := Config{VCPUs: 1, MemoryMiB: 256, MaxVCPUs: 4}
	for _, tc := range []struct {
		name string
		cfg  Config
		res  *specs.LinuxResources
		want vmSize
	}{
		{"no resources: defaults", defaults, nil, vmSize{1, 256}},
		{"no defaults: driver's", Config{}, nil, vmSize{0, 0}},
		{"empty resources", defaults, &specs.LinuxResources{}, vmSize{1, 256}},
		{"quota 1.5 cpus rounds up", defaults, cpuRes(150000, 100000), vmSize{2, 256}},
		{"quota exactly 2", defaults, cpuRes(200000, 100000), vmSize{2, 256}},
		{"small quota: 1", defaults, cpuRes(10000, 100000), vmSize{1, 256}},
		{"quota without period: 100ms", defaults, cpuRes(250000, 0), vmSize{3, 256}},
		{"unlimited quota (-1): default", defaults, cpuRes(-1, 100000), vmSize{1, 256}},
		{"bounded by MaxVCPUs", defaults, cpuRes(1600000, 100000), vmSize{4, 256}},
		{"default bounded too", Config{VCPUs: 64, MaxVCPUs: 2}, nil, vmSize{2, 0}},
		{"memory + default overhead", defaults, memRes(64 << 20), vmSize{1, 64 + DefaultMemoryOverheadMiB}},
		{"memory rounds up to MiB", defaults, memRes(64<<20 + 1), vmSize{1, 65 + DefaultMemoryOverheadMiB}},
		{"configured overhead", Config{MemoryOverheadMiB: 32}, memRes(512 << 20), vmSize{0, 544}},
		{"both", defaults, &specs.LinuxResources{CPU: cpuRes(300000, 100000).CPU, Memory: memRes(1 << 30).Memory}, vmSize{3, 1024 + DefaultMemoryOverheadMiB}},
	} {
		if got := tc.cfg.size(tc.res); got != tc.want {
			t.Errorf("%s: size = %+v, want %+v", tc.name, got, tc.want)
		}
	}
	// Without MaxVCPUs the host's CPUs bound the VM.
	if got := (Config{}).size(cpuRes(int64(runtime.NumCPU()+3)*100000, 100000)); got.VCPUs != runtime.NumCPU() {
		t.Errorf("unbounded config: %d vCPUs, want the host's %d", got.VCPUs, runtime.NumCPU())
	}
}

func TestVMCgroupPath(t *testing.T) {
	for _, tc := range []struct{ parent, want string }{
		{"", "/magnetar/magnetar-vm-sb1"},
		{"/kubepods/burstable/pod123", "/kubepods/burstable/pod123/magnetar-vm-sb1"},
		{"kubepods/pod123/", "/kubepods/pod123/magnetar-vm-sb1"},
		{"/", "/magnetar-vm-sb1"},
		{"kubepods-burstable-pod123.slice", "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod123.slice/magnetar-vm-sb1.scope"},
		{"system.slice:cri-containerd:abc", "/system.slice/cri-containerd-abc.scope/magnetar-vm-sb1"},
		{"kubepods-pod1.slice::pod1-sub.slice", "/kubepods.slice/kubepods-pod1.slice/pod1-sub.slice/magnetar-vm-sb1"},
	} {
		got, err := vmCgroupPath(tc.parent, "sb1")
		if err != nil || got != tc.want {
			t.Errorf("vmCgroupPath(%q) = %q, %v; want %q", tc.parent, got, err, tc.want)
		}
	}
	for _, tc := range []struct{ parent, id string }{
		{"/kubepods/../../etc", "sb1"},
		{"a:b", "sb1"},
		{"a:b:c:d", "sb1"},
		{"bad--name.slice:p:n", "sb1"},
		{"system.slice:p:", "sb1"},
		{"/kubepods", "../x"},
		{"/kubepods", ""},
		{"/kubepods", "a:b"},
	} {
		if got, err := vmCgroupPath(tc.parent, tc.id); !errdefs.IsInvalidArgument(err) {
			t.Errorf("vmCgroupPath(%q, %q) = %q, %v; want InvalidArgument", tc.parent, tc.id, got, err)
		}
	}
}

func TestCreateRejectsBadCgroupParent(t *testing.T) {
	b, err := New(Config{Driver: qemu.New(qemu.Options{})})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.Create(context.Background(), backend.SandboxConfig{ID: "sb1", Dir: t.TempDir(), PrivateNetwork: true, CgroupParent: "/kubepods/../x"}); !errdefs.IsInvalidArgument(err) {
		t.Errorf("Create with a bad cgroup parent: %v, want InvalidArgument", err)
	}
}

// TestCreateRefusesHostNetwork: a sandbox with neither a network namespace
// nor a private network asks for the host's network, which a guest kernel
// cannot share: InvalidArgument naming hostNetwork, not a pod with no
// network.
func TestCreateRefusesHostNetwork(t *testing.T) {
	b, err := New(Config{Driver: qemu.New(qemu.Options{})})
	if err != nil {
		t.Fatal(err)
	}
	_, err = b.Create(context.Background(), backend.SandboxConfig{ID: "sb1", Dir: t.TempDir()})
	if !errdefs.IsInvalidArgument(err) || !strings.Contains(err.Error(), "hostNetwork") {
		t.Errorf("Create on the host's network: %v, want InvalidArgument naming hostNetwork", err)
	}
	for _, cfg := range []backend.SandboxConfig{
		{ID: "sb2", Dir: t.TempDir(), PrivateNetwork: true},
		{ID: "sb3", Dir: t.TempDir(), NetNSPath: "/var/run/netns/x"},
	} {
		if _, err := b.Create(context.Background(), cfg); err != nil {
			t.Errorf("Create %+v: %v", cfg, err)
		}
	}
}
