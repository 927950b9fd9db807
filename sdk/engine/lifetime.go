package engine

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"time"

	"github.com/containerd/errdefs"
)

// TopicSandboxExpired is published when a sandbox's lifetime ends (see
// [Lifetime]), before it is stopped and removed. It is Magnetar's own:
// containerd has no such topic.
const TopicSandboxExpired = "/sandboxes/expired"

// expireStopTimeout is how long the containers of an expired sandbox get
// to exit after SIGTERM.
const expireStopTimeout = 10 * time.Second

// MaxIdleTimeout bounds [Lifetime.IdleTimeout].
const MaxIdleTimeout = 365 * 24 * time.Hour

// Lifetime ends a sandbox that is forgotten: at its deadline, or after it
// was idle for IdleTimeout, the engine stops and removes it (with a
// [TopicSandboxExpired] event first). Sandboxes of Magnetar's API may have
// one; CRI's never do. It is kept in the sandbox's record, so it holds
// across restarts of the engine.
type Lifetime struct {
	// Deadline is when the sandbox ends (zero: no deadline).
	Deadline time.Time
	// IdleTimeout ends the sandbox once it has had no activity (see
	// [Engine.Touch]) and no running process for this long (0: never).
	// The idle time counts from the later of its last activity and the
	// exit of its last process; after a restart of the engine, from the
	// restart.
	IdleTimeout time.Duration
}

// IsZero reports whether l never ends a sandbox.
func (l Lifetime) IsZero() bool { return l.Deadline.IsZero() && l.IdleTimeout == 0 }

func (l Lifetime) validate() error {
	if l.IdleTimeout < 0 || l.IdleTimeout > MaxIdleTimeout {
		return fmt.Errorf("idle timeout %v must be between 0 and %v: %w", l.IdleTimeout, MaxIdleTimeout, errdefs.ErrInvalidArgument)
	}
	return nil
}

// SetLifetime replaces a sandbox's lifetime: a zero Lifetime lets it live
// until it is deleted. A deadline already past ends the sandbox now.
func (e *Engine) SetLifetime(ctx context.Context, id string, l Lifetime) (SandboxStatus, error) {
	if err := l.validate(); err != nil {
		return SandboxStatus{}, err
	}
	sb, err := e.get(id)
	if err != nil {
		return SandboxStatus{}, err
	}
	sb.mu.Lock()
	old := sb.lifetime()
	sb.rec.Deadline, sb.rec.IdleTimeout = l.Deadline.UTC(), l.IdleTimeout
	if err := sb.persist(); err != nil {
		sb.rec.Deadline, sb.rec.IdleTimeout = old.Deadline, old.IdleTimeout
		sb.mu.Unlock()
		return SandboxStatus{}, err
	}
	sb.lastActive = time.Now()
	sb.armExpiry()
	sb.mu.Unlock()
	return sb.status(), nil
}

// Touch records activity on a sandbox (an API call about it or its
// containers): its idle time starts again. Unknown IDs are ignored.
func (e *Engine) Touch(id string) {
	e.mu.Lock()
	sb := e.sandboxes[id]
	e.mu.Unlock()
	if sb == nil {
		return
	}
	sb.mu.Lock()
	sb.lastActive = time.Now()
	sb.mu.Unlock()
}

// lifetime returns the record's lifetime; the caller holds s.mu.
func (s *sandbox) lifetime() Lifetime {
	return Lifetime{Deadline: s.rec.Deadline, IdleTimeout: s.rec.IdleTimeout}
}

// armExpiry (re)sets the timer that checks the sandbox's lifetime, for the
// earliest moment it could end; the caller holds s.mu.
func (s *sandbox) armExpiry() {
	if s.expiry != nil {
		s.expiry.Stop()
		s.expiry = nil
	}
	l := s.lifetime()
	if l.IsZero() || s.expired {
		return
	}
	var at time.Time
	if !l.Deadline.IsZero() {
		at = l.Deadline
	}
	if l.IdleTimeout > 0 {
		if idle := s.lastActive.Add(l.IdleTimeout); at.IsZero() || idle.Before(at) {
			at = idle
		}
	}
	s.expiry = time.AfterFunc(max(time.Until(at), 0), s.checkExpiry)
}

// checkExpiry ends the sandbox if its lifetime is over, else arms the
// timer again.
func (s *sandbox) checkExpiry() {
	running := s.hasLiveProcess()
	s.mu.Lock()
	if s.expired {
		s.mu.Unlock()
		return
	}
	l, now := s.lifetime(), time.Now()
	reason := ""
	switch {
	case !l.Deadline.IsZero() && !now.Before(l.Deadline):
		reason = "deadline"
	case l.IdleTimeout > 0 && !now.Before(s.lastActive.Add(l.IdleTimeout)):
		if running {
			// Not idle: the exit of its last process starts the count
			// (see noteExit).
			s.expiry = nil
			s.mu.Unlock()
			return
		}
		reason = "idle"
	}
	if reason == "" {
		s.armExpiry()
		s.mu.Unlock()
		return
	}
	s.expired = true
	s.expiry = nil
	id, ns := s.rec.ID, s.rec.Namespace
	s.mu.Unlock()
	e := s.e
	e.background(func(ctx context.Context) {
		e.events.publish(Event{Topic: TopicSandboxExpired, Namespace: ns, SandboxID: id, Reason: reason})
		if err := e.StopSandbox(ctx, id, expireStopTimeout); err == nil {
			err = e.DeleteSandbox(ctx, id)
		}
		// A failure leaves the sandbox (expired, not armed again) for its
		// owner to delete; the expiry event said why it stopped.
	})
}

// noteExit starts a sandbox's idle time when one of its processes exits.
func (s *sandbox) noteExit() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.rec.IdleTimeout > 0 {
		s.lastActive = time.Now()
		s.armExpiry()
	}
}

// hasLiveProcess reports whether a process of the sandbox exists
// (created, running or paused). It takes s.mu, then each process's lock,
// never both at once.
func (s *sandbox) hasLiveProcess() bool {
	s.mu.Lock()
	ctrs := slices.Collect(maps.Values(s.containers))
	s.mu.Unlock()
	for _, c := range ctrs {
		c.mu.Lock()
		procs := append([]*process{c.init}, slices.Collect(maps.Values(c.execs))...)
		c.mu.Unlock()
		for _, p := range procs {
			if p == nil {
				continue
			}
			p.mu.Lock()
			live := p.state != ProcessStopped
			p.mu.Unlock()
			if live {
				return true
			}
		}
	}
	return false
}

// stopExpiry stops the lifetime timer (the sandbox is being deleted, or
// the engine closes).
func (s *sandbox) stopExpiry() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.expiry != nil {
		s.expiry.Stop()
		s.expiry = nil
	}
	s.expired = true
}
