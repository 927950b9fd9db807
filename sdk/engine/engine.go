// Package engine is Magnetar's sandbox engine: it keeps the sandboxes and
// containers of every kind, drives them through their [backend.Backend],
// persists their state crash-safely so that a restarted process finds them
// again, and publishes lifecycle events.
//
// The engine has no network API of its own. The sandboxer daemon serves it
// to containerd (Sandbox Controller and Task APIs) and through Magnetar's
// Connect API; the Go SDK embeds it in-process.
package engine

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/containerd/errdefs"

	"github.com/magnetar-io/magnetar/internal/ctxutil"
	"github.com/magnetar-io/magnetar/sdk/backend"
	"github.com/magnetar-io/magnetar/sdk/network"
)

// Config configures an [Engine].
type Config struct {
	// StateDir holds one directory per sandbox. Required.
	StateDir string
	// Backends are the sandbox kinds the engine offers.
	Backends []backend.Backend
	// StopTimeout is how long Stop waits for containers to exit after
	// SIGTERM before it kills them, when the caller gives no timeout.
	// Default 10s.
	StopTimeout time.Duration
	// EventLogSize is how many bytes of the newest events the engine
	// keeps on disk, in <StateDir>/events, for watchers that resume
	// ([Engine.EventsAfter]). Default [DefaultEventLogSize].
	EventLogSize int64
	// NetNSDirs are the directories where a sandbox's network namespace
	// (SandboxSpec.NetNSPath) may be. Default [DefaultNetNSDirs].
	NetNSDirs []string
	// Network, if set, gives sandboxes that ask for one
	// (SandboxSpec.Network) a network namespace attached to one of its
	// networks; New removes the attachments of sandboxes it does not
	// find. Nil: no bridge networks.
	Network *network.Manager
}

// Engine runs sandboxes. It is safe for concurrent use.
type Engine struct {
	stateDir    string
	backends    map[string]backend.Backend
	kinds       []string
	stopTimeout time.Duration
	events      *bus
	// startSeq is the sequence number of the newest event when the
	// engine started, before it recovered anything.
	startSeq  uint64
	netnsDirs []string
	net       *network.Manager
	// sweepErr is what sweeping the network attachments on start failed
	// to remove (see NetworkSweepError).
	sweepErr error

	mu        sync.Mutex
	sandboxes map[string]*sandbox

	// closing is closed by Close; background goroutines end then.
	closing chan struct{}
	wg      sync.WaitGroup
}

// New creates an engine and recovers the sandboxes found in StateDir.
// Sandboxes whose backend cannot recover them are kept, marked
// [SandboxUnknown], so that they can still be deleted.
func New(ctx context.Context, cfg Config) (*Engine, error) {
	if cfg.StateDir == "" {
		return nil, fmt.Errorf("engine state dir is required: %w", errdefs.ErrInvalidArgument)
	}
	if cfg.StopTimeout <= 0 {
		cfg.StopTimeout = 10 * time.Second
	}
	if cfg.NetNSDirs == nil {
		cfg.NetNSDirs = DefaultNetNSDirs
	}
	dir, err := filepath.Abs(cfg.StateDir)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Join(dir, "sandboxes"), 0o700); err != nil {
		return nil, fmt.Errorf("create state dir: %w", err)
	}
	evlog, err := openEventLog(filepath.Join(dir, eventLogDir), cfg.EventLogSize)
	if err != nil {
		return nil, fmt.Errorf("open event log: %w", err)
	}
	e := &Engine{
		stateDir:    dir,
		backends:    map[string]backend.Backend{},
		stopTimeout: cfg.StopTimeout,
		netnsDirs:   cfg.NetNSDirs,
		net:         cfg.Network,
		events:      newBus(evlog),
		startSeq:    evlog.lastSeq(),
		sandboxes:   map[string]*sandbox{},
		closing:     make(chan struct{}),
	}
	for _, b := range cfg.Backends {
		kind := b.Info().Kind
		if _, dup := e.backends[kind]; dup {
			return nil, fmt.Errorf("backend kind %q registered twice: %w", kind, errdefs.ErrAlreadyExists)
		}
		e.backends[kind] = b
		e.kinds = append(e.kinds, kind)
	}
	sort.Strings(e.kinds)
	if err := e.recover(ctx); err != nil {
		evlog.close()
		return nil, err
	}
	// What cannot be swept now (a plugin gone, ...) must not keep the
	// engine from serving the sandboxes it has: the caller reads it.
	e.sweepErr = e.sweepNetworks(ctx)
	return e, nil
}

// Close stops the engine's background work. Sandboxes and containers keep
// running; a new engine on the same state dir recovers them.
func (e *Engine) Close() error {
	select {
	case <-e.closing:
	default:
		close(e.closing)
	}
	e.mu.Lock()
	sbs := slices.Collect(maps.Values(e.sandboxes))
	e.mu.Unlock()
	for _, sb := range sbs {
		sb.stopExpiry()
	}
	e.wg.Wait()
	e.events.closeAll()
	return nil
}

// Subscribe returns the engine's events until ctx ends. A subscriber that
// falls more than a thousand events behind is dropped (its channel closes).
func (e *Engine) Subscribe(ctx context.Context) <-chan Event {
	ch, _ := e.events.subscribe(ctx)
	return ch
}

// SubscribeAfter is Subscribe that also returns the sequence number of
// the last event before the first the channel gets: the events up to it
// are read with [Engine.EventsAfter].
func (e *Engine) SubscribeAfter(ctx context.Context) (<-chan Event, uint64) {
	return e.events.subscribe(ctx)
}

// StartEventSeq returns the sequence number of the newest event when the
// engine started (0 before the first): the events after it are this
// engine's, those it published while recovering (the exits of processes
// that ended while no engine ran, ...) included. A subscriber that starts
// after New reads those with [Engine.EventsAfter].
func (e *Engine) StartEventSeq() uint64 { return e.startSeq }

// LastEventSeq returns the sequence number of the newest event (0 before
// the first).
func (e *Engine) LastEventSeq() uint64 {
	return e.events.log.lastSeq()
}

// EventsAfter returns the kept events whose sequence number is greater
// than after and at most upTo, oldest first, at most max of them. An
// after older than the log (the events that followed it are gone) is
// errdefs.ErrOutOfRange; one newer than the newest event
// errdefs.ErrInvalidArgument.
func (e *Engine) EventsAfter(after, upTo uint64, max int) ([]Event, error) {
	return e.events.log.read(after, upTo, max)
}

// KindInfo is a sandbox kind and whether it can run here.
type KindInfo struct {
	backend.Info
	// Available is false when the host lacks what the kind needs; Reason
	// says what.
	Available bool
	Reason    string
}

// Kinds lists the sandbox kinds, sorted by name.
func (e *Engine) Kinds(ctx context.Context) []KindInfo {
	out := make([]KindInfo, 0, len(e.kinds))
	for _, k := range e.kinds {
		b := e.backends[k]
		ki := KindInfo{Info: b.Info(), Available: true}
		if err := b.Check(ctx); err != nil {
			ki.Available, ki.Reason = false, err.Error()
		}
		out = append(out, ki)
	}
	return out
}

// background runs fn in a goroutine owned by the engine, with a context that
// ends when the engine closes.
func (e *Engine) background(fn func(ctx context.Context)) {
	ctx, cancel := ctxutil.UntilClosed(context.Background(), e.closing, nil)
	e.wg.Go(func() {
		defer cancel()
		fn(ctx)
	})
}

func (e *Engine) sandboxDir(id string) string {
	return filepath.Join(e.stateDir, "sandboxes", id)
}

func (e *Engine) get(id string) (*sandbox, error) {
	if err := ValidateID("sandbox", id); err != nil {
		return nil, err
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	sb, ok := e.sandboxes[id]
	if !ok {
		return nil, fmt.Errorf("sandbox %q: %w", id, errdefs.ErrNotFound)
	}
	return sb, nil
}

// recoverParallel bounds how many sandboxes recover at once: recovery
// waits on runtimes and guests (runc, runsc, a VM's agent), so a restart
// with many pods should not take them one after another.
const recoverParallel = 16

// recover loads every sandbox record from the state dir, re-attaching to
// up to recoverParallel sandboxes at once.
func (e *Engine) recover(ctx context.Context) error {
	entries, err := os.ReadDir(filepath.Join(e.stateDir, "sandboxes"))
	if err != nil {
		return fmt.Errorf("read state dir: %w", err)
	}
	var (
		mu   sync.Mutex
		errs []error
		wg   sync.WaitGroup
		sem  = make(chan struct{}, recoverParallel)
	)
	for _, ent := range entries {
		if !ent.IsDir() || ValidateID("sandbox", ent.Name()) != nil {
			continue
		}
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			sb, err := e.recoverSandbox(ctx, ent.Name())
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				errs = append(errs, err)
			}
			if sb != nil {
				e.sandboxes[sb.rec.ID] = sb
			}
		})
	}
	wg.Wait()
	// Lifetimes count again once every sandbox is known: one that
	// expired while the engine was down ends now.
	for _, sb := range e.sandboxes {
		sb.mu.Lock()
		if sb.rec.State != SandboxUnknown {
			sb.armExpiry()
		}
		sb.mu.Unlock()
	}
	return errors.Join(errs...)
}

// recoverSandbox loads the record of sandbox id and re-attaches to it
// through its backend (nil: nothing of it remains).
func (e *Engine) recoverSandbox(ctx context.Context, id string) (*sandbox, error) {
	dir := e.sandboxDir(id)
	rec, err := readRecord(dir)
	if errors.Is(err, os.ErrNotExist) {
		// Creation crashed before the first record was written: nothing
		// of it can be running.
		return nil, os.RemoveAll(dir)
	}
	if err != nil {
		return nil, err
	}
	sb := newSandbox(e, rec, dir)
	if b, ok := e.backends[rec.Kind]; ok {
		impl, err := b.Recover(ctx, sb.backendConfig(), rec.BackendState)
		if err == nil {
			sb.impl = impl
			sb.recoverContainers(ctx)
		} else {
			sb.recoverErr = err
			rec.State = SandboxUnknown
		}
	} else {
		sb.recoverErr = fmt.Errorf("sandbox kind %q is not configured: %w", rec.Kind, errdefs.ErrNotImplemented)
		rec.State = SandboxUnknown
	}
	sb.lastActive = time.Now()
	if rec.State == SandboxReady && sb.impl != nil {
		sb.watch()
	} else if rec.State != SandboxReady {
		sb.markDone()
	}
	return sb, nil
}
