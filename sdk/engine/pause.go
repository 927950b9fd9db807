package engine

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"

	"github.com/containerd/errdefs"
)

// Sandbox pause topics, Magnetar's own: containerd has no such topics.
const (
	TopicSandboxPaused  = "/sandboxes/paused"
	TopicSandboxResumed = "/sandboxes/resumed"
)

// PauseSandbox freezes every running container of a ready sandbox (the
// kinds' freezers: a cgroup's for runc and wasm, the sandbox's for gvisor,
// the guest's for vm), so that nothing of it runs until [Engine.ResumeSandbox].
// While it is paused no container is created, started or exec'd into.
// Pausing a paused sandbox changes nothing. If a container cannot be
// frozen, those frozen so far are thawed again and the error returned.
// The pause is kept in the sandbox's record: it holds across restarts.
func (e *Engine) PauseSandbox(ctx context.Context, id string) (SandboxStatus, error) {
	sb, err := e.get(id)
	if err != nil {
		return SandboxStatus{}, err
	}
	sb.lifecycle.Lock()
	defer sb.lifecycle.Unlock()
	sb.mu.Lock()
	state, paused := sb.rec.State, sb.rec.Paused
	ctrs := slices.Sorted(maps.Keys(sb.containers))
	sb.mu.Unlock()
	if paused {
		return sb.status(), nil
	}
	if state != SandboxReady {
		return SandboxStatus{}, fmt.Errorf("sandbox %q is %s, not ready: %w", id, state, errdefs.ErrFailedPrecondition)
	}
	// Marked first: no container starts while they are being frozen.
	sb.mu.Lock()
	sb.rec.Paused = true
	sb.mu.Unlock()
	var frozen []string
	for _, cid := range ctrs {
		_, c, err := e.container(id, cid)
		if err != nil || c.init.status().State != ProcessRunning {
			continue // gone, or not running: nothing to freeze
		}
		if err := e.pauseResume(ctx, id, cid, true); err != nil {
			var errs []error
			for _, f := range frozen {
				errs = append(errs, e.pauseResume(context.WithoutCancel(ctx), id, f, false))
			}
			sb.mu.Lock()
			sb.rec.Paused = false
			sb.mu.Unlock()
			return SandboxStatus{}, errors.Join(fmt.Errorf("pause sandbox %q: container %q: %w", id, cid, err), errors.Join(errs...))
		}
		frozen = append(frozen, cid)
	}
	sb.mu.Lock()
	sb.rec.PausedContainers = frozen
	err = sb.persist()
	ns := sb.rec.Namespace
	sb.mu.Unlock()
	if err != nil {
		return SandboxStatus{}, err
	}
	e.events.publish(Event{Topic: TopicSandboxPaused, Namespace: ns, SandboxID: id})
	return sb.status(), nil
}

// ResumeSandbox thaws the containers [Engine.PauseSandbox] froze. Resuming
// a sandbox that is not paused changes nothing.
func (e *Engine) ResumeSandbox(ctx context.Context, id string) (SandboxStatus, error) {
	sb, err := e.get(id)
	if err != nil {
		return SandboxStatus{}, err
	}
	sb.lifecycle.Lock()
	defer sb.lifecycle.Unlock()
	if err := e.resumeSandboxLocked(ctx, sb); err != nil {
		return SandboxStatus{}, err
	}
	return sb.status(), nil
}

// resumeSandboxLocked thaws a paused sandbox; the caller holds
// sb.lifecycle. The sandbox counts as resumed even when a container could
// not be thawed (the error says which): it can be resumed or stopped one
// by one.
func (e *Engine) resumeSandboxLocked(ctx context.Context, sb *sandbox) error {
	sb.mu.Lock()
	paused, frozen, id := sb.rec.Paused, sb.rec.PausedContainers, sb.rec.ID
	sb.mu.Unlock()
	if !paused {
		return nil
	}
	var errs []error
	for _, cid := range frozen {
		_, c, err := e.container(id, cid)
		if err != nil || c.init.status().State != ProcessPaused {
			continue // deleted, or killed, meanwhile
		}
		if err := e.pauseResume(ctx, id, cid, false); err != nil {
			errs = append(errs, fmt.Errorf("container %q: %w", cid, err))
		}
	}
	sb.mu.Lock()
	sb.rec.Paused, sb.rec.PausedContainers = false, nil
	err := sb.persist()
	ns := sb.rec.Namespace
	sb.mu.Unlock()
	if err != nil {
		errs = append(errs, err)
	}
	e.events.publish(Event{Topic: TopicSandboxResumed, Namespace: ns, SandboxID: id})
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("resume sandbox %q: %w", id, err)
	}
	return nil
}

// checkNotPaused refuses work that would run in a paused sandbox.
func (s *sandbox) checkNotPaused() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.rec.Paused {
		return fmt.Errorf("sandbox %q is paused: resume it first: %w", s.rec.ID, errdefs.ErrFailedPrecondition)
	}
	return nil
}
