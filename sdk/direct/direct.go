// Package direct is direct mode: sandboxes, containers and images driven
// through Magnetar's own API, on top of the engine and the image store; no
// protobuf.
//
// A [Service] works in plain Go types and returns errors with containerd
// errdefs classes; sdk/apiserver converts its API's messages to and from
// them and maps the errors to protocol codes.
//
// Containers made through it get an engine-managed bundle: the OCI spec is
// generated from the request, and their stdio goes through FIFOs whose
// output the service keeps on disk, in a bounded ring per process, for
// clients that attach later or resume from an offset (also after a restart
// of the sandboxer: a new service over the same state dir takes the rings
// and FIFOs over). Containers
// created from an image get a writable overlay over the image's unpacked
// root file system (see [Service.CreateContainer]).
package direct

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/containerd/errdefs"

	"github.com/magnetar-io/magnetar/sdk/engine"
	"github.com/magnetar-io/magnetar/sdk/image"
)

// Service drives sandboxes, containers and images.
type Service struct {
	e *engine.Engine

	// images is the image store; nil without WithImageStore.
	images *image.Store
	// imageMu orders image uses registered by CreateContainer against
	// RemoveImage's release of stale ones; creating holds the containers
	// whose use is registered but which the engine may not know yet.
	imageMu  sync.Mutex
	creating map[string]bool

	mu    sync.Mutex
	procs map[procKey]*procIO

	// ringSize is how many bytes of output each process keeps.
	ringSize int64
	// maxFileSize bounds files written through the file methods.
	maxFileSize int64
	// hostAccess allows requests that reach the host (WithHostAccess).
	hostAccess bool
	// defaultNetwork is the mode of NetworkDefault (WithDefaultNetwork).
	defaultNetwork NetworkMode

	// ctx ends when the service closes.
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

type procKey struct{ container, exec string }

// Option configures a [Service].
type Option func(*Service)

// WithImageStore serves images from st and lets CreateContainer take
// images from it. Without it, the image methods and containers from images
// fail with errdefs.ErrFailedPrecondition. The caller keeps ownership of
// st and closes it after the service.
func WithImageStore(st *image.Store) Option {
	return func(s *Service) { s.images = st }
}

// WithOutputRingSize sets how many bytes of output the service keeps on
// disk per process (both streams together; about that many: between half
// and all of it). Default [DefaultOutputRingSize]; at least 128 KiB.
func WithOutputRingSize(n int64) Option {
	return func(s *Service) {
		if n > 0 {
			s.ringSize = n
		}
	}
}

// WithHostAccess lets requests reach the host: containers with a host
// directory as root file system (RootfsPath), bind mounts and mounts of
// other than kernel file systems (tmpfs, proc, sysfs, devpts, mqueue,
// cgroup), and raw OCI specs (OCISpecJSON) applied as given, with their
// own namespaces, cgroup, capabilities, devices and hooks. Without it,
// those fail with errdefs.ErrPermissionDenied and the service sets the
// namespaces, cgroup and capabilities of every container. Whoever makes
// such requests is root on the host.
func WithHostAccess(allow bool) Option {
	return func(s *Service) { s.hostAccess = allow }
}

// WithDefaultNetwork sets the network mode of sandboxes that ask for none
// (NetworkDefault): NetworkNone (the default) or NetworkBridge (which
// needs an engine with networks, [engine.Config.Network]).
func WithDefaultNetwork(m NetworkMode) Option {
	return func(s *Service) { s.defaultNetwork = m }
}

// New returns a service over e. It takes over the output of the
// containers an earlier service made in e's state dir (a restart): their
// rings, and their output FIFOs where the process may still write. Close
// it to stop its background copying.
func New(e *engine.Engine, opts ...Option) *Service {
	s := &Service{e: e, procs: map[procKey]*procIO{}, creating: map[string]bool{}, ringSize: DefaultOutputRingSize, maxFileSize: DefaultMaxFileSize, defaultNetwork: NetworkNone}
	for _, o := range opts {
		o(s)
	}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	s.recoverOutputs()
	s.wg.Go(s.forgetDeleted)
	return s
}

// forgetDeleted drops the stdio state of processes the engine deleted
// without this service: those of a sandbox whose lifetime ended, or
// deleted through CRI.
func (s *Service) forgetDeleted() {
	for s.ctx.Err() == nil {
		// A subscriber that falls behind is dropped: subscribe again.
		for ev := range s.e.Subscribe(s.ctx) {
			if ev.Topic != engine.TopicTaskDelete {
				continue
			}
			if ev.ExecID == "" {
				s.forgetContainer(ev.ContainerID)
			} else {
				s.forget(procKey{ev.ContainerID, ev.ExecID})
			}
		}
		// Dropped, or the engine closed: not in a busy loop.
		select {
		case <-s.ctx.Done():
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// recoverOutputs takes over the output of the containers made through the
// API (they have a meta.json) that e recovered. Exec'd processes, which
// the engine recovers, do not have their output served again yet.
func (s *Service) recoverOutputs() {
	ctx := s.ctx
	for _, sb := range s.e.ListSandboxes(ctx) {
		sts, err := s.e.Containers(ctx, sb.ID)
		if err != nil {
			continue
		}
		for _, st := range sts {
			dir, err := s.e.ContainerDir(ctx, sb.ID, st.ContainerID)
			if err != nil {
				continue
			}
			if _, err := os.Stat(filepath.Join(dir, metaFile)); err != nil {
				continue
			}
			if _, err := os.Stat(ringDir(dir, "")); errors.Is(err, os.ErrNotExist) {
				continue // made by a version without rings
			}
			p, err := s.recoverProcIO(dir, "", st.Stdio)
			if err != nil {
				continue
			}
			s.procs[procKey{st.ContainerID, ""}] = p
			if st.State == engine.ProcessStopped {
				p.markExited()
			} else {
				s.watchExit(sb.ID, st.ContainerID, "", p)
			}
		}
	}
}

// watchExit tells p's copies when its process exits.
func (s *Service) watchExit(sandboxID, containerID, execID string, p *procIO) {
	s.wg.Go(func() {
		if _, err := s.e.Wait(s.ctx, sandboxID, containerID, execID); err == nil || errdefs.IsNotFound(err) {
			p.markExited()
		}
	})
}

// Close stops copying output and closes stdin pipes. Containers keep
// running; their output waits in the FIFOs for the next service.
func (s *Service) Close() error {
	s.cancel()
	s.mu.Lock()
	procs := s.procs
	s.procs = map[procKey]*procIO{}
	s.mu.Unlock()
	for _, p := range procs {
		p.close()
	}
	s.wg.Wait()
	return nil
}

// forget drops the stdio state of a process.
func (s *Service) forget(k procKey) {
	s.mu.Lock()
	p := s.procs[k]
	delete(s.procs, k)
	s.mu.Unlock()
	if p != nil {
		p.close()
	}
}

func (s *Service) proc(k procKey) *procIO {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.procs[k]
}
