package taskservice

import (
	"testing"

	cg1 "github.com/containerd/cgroups/v3/cgroup1/stats"
	cg2 "github.com/containerd/cgroups/v3/cgroup2/stats"
	"github.com/containerd/typeurl/v2"

	"github.com/magnetar-io/magnetar/sdk/backend"
)

func TestMetricsAny(t *testing.T) {
	st := &backend.Stats{CPUUsageNanos: 5000, MemoryUsageBytes: 100, MemoryWorkingBytes: 60, MemoryLimitBytes: 1000, Pids: 3}
	for _, v2 := range []bool{false, true} {
		a, err := typeurl.MarshalAnyToProto(synthesize(st, v2))
		if err != nil {
			t.Fatal(err)
		}
		m, err := typeurl.UnmarshalAny(a)
		if err != nil {
			t.Fatal(err)
		}
		switch m := m.(type) {
		case *cg1.Metrics:
			if v2 || m.CPU.Usage.Total != 5000 || m.Memory.Usage.Usage != 100 || m.Memory.TotalInactiveFile != 40 || m.Pids.Current != 3 {
				t.Errorf("v1 metrics: %v", m)
			}
		case *cg2.Metrics:
			if !v2 || m.CPU.UsageUsec != 5 || m.Memory.Usage != 100 || m.Memory.InactiveFile != 40 || m.Memory.UsageLimit != 1000 {
				t.Errorf("v2 metrics: %v", m)
			}
		default:
			t.Errorf("metrics type %T", m)
		}
	}
	// A backend's own message passes through.
	raw := &cg2.Metrics{Pids: &cg2.PidsStat{Current: 9}}
	a, err := MetricsAny(&backend.Stats{Raw: raw})
	if err != nil {
		t.Fatal(err)
	}
	m, err := typeurl.UnmarshalAny(a)
	if err != nil || m.(*cg2.Metrics).Pids.Current != 9 {
		t.Errorf("raw pass-through: %v %v", m, err)
	}
}
