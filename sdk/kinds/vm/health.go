package vm

import (
	"context"
	"fmt"
	"sync"
	"time"

	agentv1 "github.com/magnetar-io/magnetar/gen/magnetar/agent/v1"
)

// monitors are the goroutines a running sandbox owns besides the VM's
// waiter: the guest event stream, the health checker and the clock
// keeper. They start once the guest is set up, end on Stop (and when the
// VM is gone), and are waited for there.
type monitors struct {
	wg sync.WaitGroup

	mu      sync.Mutex
	started bool
	cancel  context.CancelFunc
	// Last Health answer and when; consecutive failures; why the VM was
	// declared dead (nil while alive).
	health   *agentv1.HealthResponse
	healthAt time.Time
	failures int
	dead     error
	// Clock syncs done, the last one's time, reason and measured drift.
	syncs      int
	syncAt     time.Time
	syncReason string
	drift      time.Duration
	syncErr    error
	// logs holds the agent's recent log lines (see events.go).
	logs logRing
}

func newMonitors() *monitors { return &monitors{logs: logRing{max: logRingSize}} }

// startMonitors starts the sandbox's goroutines. Their context ends with
// the VM (s.life) or through stopMonitors.
func (s *sandbox) startMonitors() {
	m := s.mon
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.started {
		return
	}
	m.started = true
	ctx, cancel := context.WithCancel(s.life)
	m.cancel = cancel
	cfg := s.b.cfg
	hc := &healthChecker{
		client:   s.agentClient,
		interval: cfg.HealthInterval,
		timeout:  cfg.HealthTimeout,
		policy:   healthPolicy{limit: cfg.HealthFailures},
		observe:  m.observeHealth,
		onDead:   s.agentDead,
	}
	m.wg.Go(func() { hc.run(ctx) })
	m.wg.Go(func() { s.runEvents(ctx) })
	m.wg.Go(func() {
		s.runClock(ctx, newClockDetector(readClocks, clockJumpThreshold, cfg.ClockSyncInterval), cfg.ClockCheckInterval)
	})
}

// stopMonitors ends the sandbox's goroutines and waits for them. It may be
// called more than once.
func (s *sandbox) stopMonitors() {
	m := s.mon
	m.mu.Lock()
	cancel := m.cancel
	m.mu.Unlock()
	if cancel != nil {
		cancel()
	}
	m.wg.Wait()
}

// agentClient is the current AgentService client, or nil while there is
// no agent session.
func (s *sandbox) agentClient() agentv1.TTRPCAgentServiceClient {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.isGone() {
		return nil
	}
	return s.agent
}

// agentDead kills the VM of a sandbox whose agent stopped answering, so
// that Wait returns and the pod is reported not ready.
func (s *sandbox) agentDead(reason error) {
	s.mon.mu.Lock()
	s.mon.dead = reason
	s.mon.mu.Unlock()
	s.mu.Lock()
	v := s.vm
	s.mu.Unlock()
	if v == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_ = v.Stop(ctx, true) // the waiter records the exit
}

func (m *monitors) observeHealth(resp *agentv1.HealthResponse, err error, failures int) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.failures = failures
	if err == nil {
		m.health, m.healthAt = resp, time.Now()
	}
}

// healthPolicy counts consecutive failed pings; limit failures in a row
// mean the agent is dead. A success resets the count.
type healthPolicy struct {
	limit int
	fails int
}

// record notes one ping's outcome and reports whether the agent is now
// considered dead.
func (p *healthPolicy) record(ok bool) bool {
	if ok {
		p.fails = 0
		return false
	}
	p.fails++
	return p.fails >= p.limit
}

// healthChecker pings the agent every interval until ctx ends or the
// policy declares it dead, then calls onDead once and returns.
type healthChecker struct {
	// client returns the agent client to ping; nil (no session, for
	// example while reconnecting) skips the round without counting it.
	client   func() agentv1.TTRPCAgentServiceClient
	interval time.Duration
	timeout  time.Duration
	policy   healthPolicy
	// observe sees every ping's outcome and the failure count (optional).
	observe func(resp *agentv1.HealthResponse, err error, failures int)
	onDead  func(reason error)
}

func (h *healthChecker) run(ctx context.Context) {
	t := time.NewTicker(h.interval)
	defer t.Stop()
	var last error
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		c := h.client()
		if c == nil {
			continue
		}
		pctx, cancel := context.WithTimeout(ctx, h.timeout)
		resp, err := c.Health(pctx, &agentv1.HealthRequest{})
		cancel()
		if ctx.Err() != nil {
			return // stopping: a cancelled ping says nothing about the agent
		}
		if err != nil {
			last = err
		}
		dead := h.policy.record(err == nil)
		if h.observe != nil {
			h.observe(resp, err, h.policy.fails)
		}
		if dead {
			h.onDead(fmt.Errorf("agent failed %d health checks in a row: %w", h.policy.fails, last))
			return
		}
	}
}
