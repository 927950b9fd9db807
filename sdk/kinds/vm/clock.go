package vm

import (
	"context"
	"fmt"
	"time"

	"github.com/containerd/errdefs/pkg/errgrpc"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/types/known/timestamppb"

	agentv1 "github.com/magnetar-io/magnetar/gen/magnetar/agent/v1"
)

// clockJumpThreshold is how far the clocks may disagree between two
// checks before the guest clock is resynced.
const clockJumpThreshold = 2 * time.Second

// clockSample is one reading of the host clocks.
type clockSample struct {
	// Boot is CLOCK_BOOTTIME (counts suspend), Mono CLOCK_MONOTONIC (does
	// not).
	Boot, Mono time.Duration
	// Wall is the wall clock without Go's monotonic reading.
	Wall time.Time
}

// readClocks reads the host clocks.
func readClocks() clockSample {
	var b, m unix.Timespec
	_ = unix.ClockGettime(unix.CLOCK_BOOTTIME, &b)
	_ = unix.ClockGettime(unix.CLOCK_MONOTONIC, &m)
	return clockSample{Boot: time.Duration(b.Nano()), Mono: time.Duration(m.Nano()), Wall: time.Now().Round(0)}
}

// clockDetector decides when the guest clock needs a sync: after a host
// suspend (CLOCK_BOOTTIME advanced more than CLOCK_MONOTONIC between two
// checks: the VM did not run meanwhile, so its clock is behind), after a
// jump of the host wall clock, and every period anyway. It is pure: the
// clocks are read through read.
type clockDetector struct {
	read      func() clockSample
	threshold time.Duration
	period    time.Duration

	last     clockSample
	lastSync time.Duration // CLOCK_BOOTTIME of the last sync
	pending  string
}

// newClockDetector starts detecting from now; the guest clock was just set
// (by Setup), so the first periodic sync is one period away.
func newClockDetector(read func() clockSample, threshold, period time.Duration) *clockDetector {
	s := read()
	return &clockDetector{read: read, threshold: threshold, period: period, last: s, lastSync: s.Boot}
}

// check reads the clocks and returns why the guest clock should be synced
// now, or "" when it need not. A reason stays pending until [synced].
func (d *clockDetector) check() string {
	s := d.read()
	dBoot, dMono, dWall := s.Boot-d.last.Boot, s.Mono-d.last.Mono, s.Wall.Sub(d.last.Wall)
	d.last = s
	switch {
	case dBoot-dMono > d.threshold:
		d.pending = fmt.Sprintf("host suspended for %s", (dBoot - dMono).Round(time.Millisecond))
	case abs(dWall-dBoot) > d.threshold:
		d.pending = fmt.Sprintf("host wall clock jumped by %s", (dWall - dBoot).Round(time.Millisecond))
	case d.pending == "" && s.Boot-d.lastSync >= d.period:
		d.pending = "periodic"
	}
	return d.pending
}

// synced records a successful sync.
func (d *clockDetector) synced() {
	d.pending = ""
	d.lastSync = d.last.Boot
}

func abs(d time.Duration) time.Duration {
	if d < 0 {
		return -d
	}
	return d
}

// runClock checks the clocks every interval and syncs the guest clock when
// the detector asks, until ctx ends. A failed sync is retried at the next
// check.
func (s *sandbox) runClock(ctx context.Context, d *clockDetector, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		reason := d.check()
		if reason == "" {
			continue
		}
		c := s.agentClient()
		if c == nil {
			continue
		}
		drift, err := syncClock(ctx, c, s.b.cfg.HealthTimeout)
		if ctx.Err() != nil {
			return
		}
		if err == nil {
			d.synced()
		}
		s.mon.recordSync(reason, drift, err)
	}
}

// syncClock sets the guest clock to the host's and returns how far the
// guest was behind (negative: ahead).
func syncClock(ctx context.Context, c agentv1.TTRPCAgentServiceClient, timeout time.Duration) (time.Duration, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	now := time.Now()
	resp, err := c.SyncClock(ctx, &agentv1.SyncClockRequest{HostTime: timestamppb.New(now)})
	if err != nil {
		return 0, fmt.Errorf("sync guest clock: %w", errgrpc.ToNative(err))
	}
	var drift time.Duration
	if g := resp.GetGuestTime(); g != nil {
		drift = now.Sub(g.AsTime())
	}
	return drift, nil
}

func (m *monitors) recordSync(reason string, drift time.Duration, err error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.syncErr = err
	if err == nil {
		m.syncs++
		m.syncAt, m.syncReason, m.drift = time.Now(), reason, drift
	}
}
