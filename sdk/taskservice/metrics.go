package taskservice

import (
	"fmt"

	"github.com/containerd/cgroups/v3"
	cg1 "github.com/containerd/cgroups/v3/cgroup1/stats"
	cg2 "github.com/containerd/cgroups/v3/cgroup2/stats"
	"github.com/containerd/typeurl/v2"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/magnetar-io/magnetar/sdk/backend"
)

// MetricsAny encodes a stats sample the way containerd's runc shim does:
// an Any of a cgroups v1 or v2 Metrics message, which is what CRI decodes
// for container and pod stats. A backend that reports its native message
// in Raw gets it passed through; otherwise one is synthesized from the
// summary numbers, in the host's cgroup version.
func MetricsAny(st *backend.Stats) (*anypb.Any, error) {
	if st == nil {
		return nil, nil
	}
	var msg any
	switch raw := st.Raw.(type) {
	case *cg1.Metrics, *cg2.Metrics:
		msg = raw
	case nil:
		msg = synthesize(st, cgroups.Mode() == cgroups.Unified)
	default:
		// Another native message (a VM's own stats): pass it on if it
		// is a registered type.
		a, err := typeurl.MarshalAnyToProto(raw)
		if err != nil {
			return nil, fmt.Errorf("encode %T stats: %w", raw, err)
		}
		return a, nil
	}
	return typeurl.MarshalAnyToProto(msg)
}

// synthesize builds a cgroups Metrics message from summary numbers.
func synthesize(st *backend.Stats, v2 bool) any {
	var inactive uint64
	if st.MemoryWorkingBytes > 0 && st.MemoryWorkingBytes <= st.MemoryUsageBytes {
		inactive = st.MemoryUsageBytes - st.MemoryWorkingBytes
	}
	if v2 {
		return &cg2.Metrics{
			Pids:   &cg2.PidsStat{Current: st.Pids},
			CPU:    &cg2.CPUStat{UsageUsec: st.CPUUsageNanos / 1000},
			Memory: &cg2.MemoryStat{Usage: st.MemoryUsageBytes, UsageLimit: st.MemoryLimitBytes, InactiveFile: inactive},
		}
	}
	return &cg1.Metrics{
		Pids: &cg1.PidsStat{Current: st.Pids},
		CPU:  &cg1.CPUStat{Usage: &cg1.CPUUsage{Total: st.CPUUsageNanos}},
		Memory: &cg1.MemoryStat{
			Usage:             &cg1.MemoryEntry{Usage: st.MemoryUsageBytes, Limit: st.MemoryLimitBytes},
			TotalInactiveFile: inactive,
		},
	}
}
