package engine

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"

	"github.com/magnetar-io/magnetar/sdk/backend"
)

// SandboxUsage is [Engine.SandboxStats] with the sandbox's network
// traffic: the bytes received and sent on the interfaces of its network
// namespace (loopback and a VM's tap devices, which carry the same bytes
// as the interface they are bridged to, left out). A sandbox on the
// host's network reports no traffic of its own.
func (e *Engine) SandboxUsage(ctx context.Context, id string) (*backend.Stats, error) {
	st, err := e.SandboxStats(ctx, id)
	if err != nil {
		return nil, err
	}
	status, err := e.Sandbox(ctx, id)
	if err != nil {
		return nil, err
	}
	if status.HostNetwork {
		return st, nil
	}
	out := *st
	if pid := e.netnsPid(ctx, status); pid > 0 {
		// Not a namespace that is the host's (a wasm sandbox's runner):
		// its traffic is not the sandbox's.
		if ns, err := os.Open(fmt.Sprintf("/proc/%d/ns/net", pid)); err == nil {
			if !isHostNetNS(ns) {
				if rx, tx, err := netDevBytes(fmt.Sprintf("/proc/%d/net/dev", pid)); err == nil {
					out.NetRxBytes, out.NetTxBytes = rx, tx
				}
			}
			ns.Close()
		}
	}
	return &out, nil
}

// netnsPid returns a host process in the sandbox's network namespace: its
// own (a VMM, a gVisor sandbox), else the init of a running container of a
// kind whose pids are the host's (0: none).
func (e *Engine) netnsPid(ctx context.Context, st SandboxStatus) uint32 {
	if st.Pid > 0 {
		return st.Pid
	}
	sb, err := e.get(st.ID)
	if err != nil || sb.isGuest() {
		return 0
	}
	ctrs, err := e.Containers(ctx, st.ID)
	if err != nil {
		return 0
	}
	for _, c := range ctrs {
		if c.State == ProcessRunning && c.Pid > 0 {
			return c.Pid
		}
	}
	return 0
}

// isGuest reports whether the sandbox's container pids are a guest's.
func (s *sandbox) isGuest() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.rec.Kind == "vm"
}

// netDevBytes sums the receive and transmit byte counters of
// /proc/net/dev at path, without loopback and tap devices.
func netDevBytes(path string) (rx, tx uint64, err error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return 0, 0, err
	}
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		name, rest, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue // the two header lines
		}
		name = strings.TrimSpace(name)
		if name == "lo" || strings.HasPrefix(name, "tap") {
			continue
		}
		f := strings.Fields(rest)
		if len(f) < 9 {
			continue
		}
		r, err1 := strconv.ParseUint(f[0], 10, 64)
		t, err2 := strconv.ParseUint(f[8], 10, 64)
		if err1 != nil || err2 != nil {
			continue
		}
		rx += r
		tx += t
	}
	return rx, tx, sc.Err()
}
