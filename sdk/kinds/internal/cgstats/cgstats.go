// Package cgstats turns cgroup v1 and v2 metrics (containerd's cgroups
// package) into the backend's [backend.Stats], for the kinds whose
// containers live in host cgroups.
package cgstats

import (
	"time"

	v1 "github.com/containerd/cgroups/v3/cgroup1/stats"
	v2 "github.com/containerd/cgroups/v3/cgroup2/stats"

	"github.com/magnetar-io/magnetar/sdk/backend"
)

// FromV1 converts cgroup v1 metrics; st becomes the Raw metrics.
func FromV1(st *v1.Metrics, at time.Time) *backend.Stats {
	s := &backend.Stats{Timestamp: at, Raw: st}
	if st.CPU != nil && st.CPU.Usage != nil {
		s.CPUUsageNanos = st.CPU.Usage.Total
	}
	if st.Memory != nil && st.Memory.Usage != nil {
		s.MemoryUsageBytes, s.MemoryLimitBytes = st.Memory.Usage.Usage, st.Memory.Usage.Limit
		s.MemoryWorkingBytes = st.Memory.Usage.Usage - min(st.Memory.Usage.Usage, st.Memory.TotalInactiveFile)
	}
	if st.Pids != nil {
		s.Pids = st.Pids.Current
	}
	if st.Blkio != nil {
		for _, e := range st.Blkio.IoServiceBytesRecursive {
			switch e.Op {
			case "Read", "read":
				s.DiskReadBytes += e.Value
			case "Write", "write":
				s.DiskWriteBytes += e.Value
			}
		}
	}
	return s
}

// FromV2 converts cgroup v2 metrics; st becomes the Raw metrics.
func FromV2(st *v2.Metrics, at time.Time) *backend.Stats {
	s := &backend.Stats{Timestamp: at, Raw: st}
	if st.CPU != nil {
		s.CPUUsageNanos = st.CPU.UsageUsec * 1000
	}
	if st.Memory != nil {
		s.MemoryUsageBytes, s.MemoryLimitBytes = st.Memory.Usage, st.Memory.UsageLimit
		s.MemoryWorkingBytes = st.Memory.Usage - min(st.Memory.Usage, st.Memory.InactiveFile)
	}
	if st.Pids != nil {
		s.Pids = st.Pids.Current
	}
	if st.Io != nil {
		for _, e := range st.Io.Usage {
			s.DiskReadBytes += e.Rbytes
			s.DiskWriteBytes += e.Wbytes
		}
	}
	return s
}
