// Package apiserver serves Magnetar's own API (magnetar.sandbox.v1,
// magnetar.container.v1 and magnetar.image.v1) over an [engine.Engine] and,
// for images, an [image.Store]. The same handlers run in
// the sandboxer daemon (Connect, gRPC and gRPC-Web over a unix socket) and
// in-process in the Go SDK's embedded mode.
//
// Containers made through this API get an engine-managed bundle: the OCI
// spec is generated from the request, and their stdio goes through FIFOs
// whose output the server keeps for clients that attach later. Containers
// created from an image get a writable overlay over the image's unpacked
// root file system (see [Server.CreateContainer]).
package apiserver

import (
	"sync"

	"connectrpc.com/connect/v2"

	"github.com/magnetar-io/magnetar/gen/magnetar/container/v1/containerv1connect"
	"github.com/magnetar-io/magnetar/gen/magnetar/image/v1/imagev1connect"
	"github.com/magnetar-io/magnetar/gen/magnetar/sandbox/v1/sandboxv1connect"
	"github.com/magnetar-io/magnetar/sdk/engine"
	"github.com/magnetar-io/magnetar/sdk/image"
)

// Server implements the sandbox, container and image services.
type Server struct {
	sandboxv1connect.UnimplementedSandboxServiceHandler
	containerv1connect.UnimplementedContainerServiceHandler
	imagev1connect.UnimplementedImageServiceHandler

	e *engine.Engine
	// TaskAddress, if set, reports the containerd task address of a
	// sandbox in its API representation.
	taskAddress func(sandboxID string) string

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

// Option configures a [Server].
type Option func(*Server)

// WithTaskAddress reports the containerd Task API address of each sandbox
// in GetSandbox and ListSandboxes.
func WithTaskAddress(fn func(sandboxID string) string) Option {
	return func(s *Server) { s.taskAddress = fn }
}

// WithImageStore serves the image service from st and lets CreateContainer
// take images from it. Without it, the image service and containers from
// images fail with FAILED_PRECONDITION. The caller keeps ownership of st
// and closes it after the server.
func WithImageStore(st *image.Store) Option {
	return func(s *Server) { s.images = st }
}

// New returns a server over e. Close it to stop its background copying.
func New(e *engine.Engine, opts ...Option) *Server {
	s := &Server{e: e, procs: map[procKey]*procIO{}, creating: map[string]bool{}, stop: make(chan struct{})}
	for _, o := range opts {
		o(s)
	}
	return s
}

// Register adds the sandbox, container and image services to a Connect
// server.
func (s *Server) Register(srv *connect.Server) {
	sandboxv1connect.RegisterSandboxServiceHandler(srv, s)
	containerv1connect.RegisterContainerServiceHandler(srv, s)
	imagev1connect.RegisterImageServiceHandler(srv, s)
}

// Close stops copying output and closes stdin pipes. Containers keep
// running.
func (s *Server) Close() error {
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
func (s *Server) forget(k procKey) {
	s.mu.Lock()
	p := s.procs[k]
	delete(s.procs, k)
	s.mu.Unlock()
	if p != nil {
		p.close()
	}
}

func (s *Server) proc(k procKey) *procIO {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.procs[k]
}
