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
// output the service keeps for clients that attach later. Containers
// created from an image get a writable overlay over the image's unpacked
// root file system (see [Service.CreateContainer]).
package direct

import (
	"sync"

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

	stop chan struct{}
	wg   sync.WaitGroup
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

// New returns a service over e. Close it to stop its background copying.
func New(e *engine.Engine, opts ...Option) *Service {
	s := &Service{e: e, procs: map[procKey]*procIO{}, creating: map[string]bool{}, stop: make(chan struct{})}
	for _, o := range opts {
		o(s)
	}
	return s
}

// Close stops copying output and closes stdin pipes. Containers keep
// running.
func (s *Service) Close() error {
	close(s.stop)
	s.mu.Lock()
	for _, p := range s.procs {
		p.close()
	}
	s.mu.Unlock()
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
