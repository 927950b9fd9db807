package agent

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	agentv1 "github.com/magnetar-io/magnetar/gen/magnetar/agent/v1"
	"github.com/magnetar-io/magnetar/sdk/taskservice"
)

// service implements agentv1.TTRPCAgentServiceService.
type service struct {
	a *Agent

	eventsMu sync.Mutex // one Events stream at a time
	shutOnce sync.Once
}

var _ agentv1.TTRPCAgentServiceService = (*service)(nil)

func (s *service) Health(ctx context.Context, _ *agentv1.HealthRequest) (*agentv1.HealthResponse, error) {
	bt, err := bootTime()
	if err != nil {
		return nil, err
	}
	resp := &agentv1.HealthResponse{
		Version:  Version,
		Uptime:   durationpb.New(time.Since(s.a.started)),
		BootTime: timestamppb.New(bt),
	}
	// Memory and load are best effort: a guest without them is still
	// healthy.
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		resp.MemTotalBytes, resp.MemAvailableBytes = parseMeminfo(b)
	}
	if b, err := os.ReadFile("/proc/loadavg"); err == nil {
		resp.Load1, resp.Load5, resp.Load15 = parseLoadavg(b)
	}
	return resp, nil
}

// parseMeminfo returns MemTotal and MemAvailable of /proc/meminfo in
// bytes (0 when missing).
func parseMeminfo(b []byte) (total, avail uint64) {
	for _, l := range strings.Split(string(b), "\n") {
		f := strings.Fields(l)
		if len(f) < 2 {
			continue
		}
		v, err := strconv.ParseUint(f[1], 10, 64)
		if err != nil {
			continue
		}
		if len(f) > 2 && f[2] == "kB" {
			v *= 1024
		}
		switch f[0] {
		case "MemTotal:":
			total = v
		case "MemAvailable:":
			avail = v
		}
	}
	return total, avail
}

// parseLoadavg returns the three load averages of /proc/loadavg.
func parseLoadavg(b []byte) (l1, l5, l15 float64) {
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return 0, 0, 0
	}
	l1, _ = strconv.ParseFloat(f[0], 64)
	l5, _ = strconv.ParseFloat(f[1], 64)
	l15, _ = strconv.ParseFloat(f[2], 64)
	return l1, l5, l15
}

func (s *service) Setup(ctx context.Context, req *agentv1.SetupRequest) (*agentv1.SetupResponse, error) {
	if err := s.a.Setup(ctx, req); err != nil {
		return nil, err
	}
	return &agentv1.SetupResponse{}, nil
}

// Events streams the agent's events. The unary interceptor of the agent's
// server does not see streams: their errors are mapped here.
func (s *service) Events(ctx context.Context, _ *agentv1.EventsRequest, stream agentv1.TTRPCAgentService_EventsServer) error {
	return taskservice.StreamError(s.events(ctx, stream))
}

func (s *service) events(ctx context.Context, stream agentv1.TTRPCAgentService_EventsServer) error {
	if !s.eventsMu.TryLock() {
		return fmt.Errorf("an events stream is already open: %w", errdefs.ErrAlreadyExists)
	}
	defer s.eventsMu.Unlock()
	for {
		ev, err := s.a.events.next(ctx)
		if err != nil {
			return nil // the host cancelled
		}
		if err := stream.Send(ev); err != nil {
			s.a.events.unshift(ev)
			return err
		}
	}
}

func (s *service) SyncClock(ctx context.Context, req *agentv1.SyncClockRequest) (*agentv1.SyncClockResponse, error) {
	before := time.Now()
	if err := setClock(req.GetHostTime()); err != nil {
		return nil, err
	}
	s.a.log().Debug("clock synced", "drift", req.GetHostTime().AsTime().Sub(before))
	return &agentv1.SyncClockResponse{GuestTime: timestamppb.New(before)}, nil
}

func (s *service) Shutdown(ctx context.Context, req *agentv1.ShutdownRequest) (*agentv1.ShutdownResponse, error) {
	grace := req.GetGracePeriod().AsDuration()
	s.shutOnce.Do(func() {
		s.a.log().Info("shutting down", "grace", grace)
		// The answer goes out before the VM powers off; the VM ending
		// ends this goroutine.
		go s.a.shutdown(grace)
	})
	return &agentv1.ShutdownResponse{}, nil
}

// shutdown stops every process, syncs and powers the VM off.
func (a *Agent) shutdown(grace time.Duration) {
	time.Sleep(50 * time.Millisecond) // let the response reach the host
	if os.Getpid() == 1 {
		if grace > 0 {
			_ = unix.Kill(-1, unix.SIGTERM) // every process but PID 1
			deadline := time.Now().Add(grace)
			for time.Now().Before(deadline) && othersAlive() {
				time.Sleep(50 * time.Millisecond)
			}
		}
		_ = unix.Kill(-1, unix.SIGKILL)
	}
	a.log().Info("powering off")
	a.opts.PowerOff()
}

// othersAlive reports whether processes other than the agent and kernel
// threads exist.
func othersAlive() bool {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return false
	}
	for _, e := range ents {
		if e.Name() == "1" || e.Name()[0] < '0' || e.Name()[0] > '9' {
			continue
		}
		// Kernel threads have an empty cmdline.
		if b, err := os.ReadFile("/proc/" + e.Name() + "/cmdline"); err == nil && len(b) > 0 {
			return true
		}
	}
	return false
}

func setClock(ts *timestamppb.Timestamp) error {
	if ts == nil {
		return nil
	}
	if err := ts.CheckValid(); err != nil {
		return fmt.Errorf("set clock: %w: %w", err, errdefs.ErrInvalidArgument)
	}
	tv := unix.NsecToTimeval(ts.AsTime().UnixNano())
	if err := unix.Settimeofday(&tv); err != nil {
		return fmt.Errorf("set clock: %w", err)
	}
	return nil
}

// setLevel sets the agent's log level from a Setup request.
func (a *Agent) setLevel(level int32) {
	if a.level != nil {
		a.level.Set(slog.Level(level))
	}
}
