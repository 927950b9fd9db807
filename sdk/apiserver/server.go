// Package apiserver serves Magnetar's own API (magnetar.sandbox.v1 and
// magnetar.container.v1) over an [engine.Engine]. The same handlers run in
// the sandboxer daemon (Connect, gRPC and gRPC-Web over a unix socket) and
// in-process in the Go SDK's embedded mode.
//
// Containers made through this API get an engine-managed bundle: the OCI
// spec is generated from the request, and their stdio goes through FIFOs
// whose output the server keeps for clients that attach later.
package apiserver

import (
	"sync"

	"connectrpc.com/connect/v2"

	"github.com/magnetar-io/magnetar/gen/magnetar/container/v1/containerv1connect"
	"github.com/magnetar-io/magnetar/gen/magnetar/sandbox/v1/sandboxv1connect"
	"github.com/magnetar-io/magnetar/sdk/engine"
)

// Server implements the sandbox and container services.
type Server struct {
	sandboxv1connect.UnimplementedSandboxServiceHandler
	containerv1connect.UnimplementedContainerServiceHandler

	e *engine.Engine
	// TaskAddress, if set, reports the containerd task address of a
	// sandbox in its API representation.
	taskAddress func(sandboxID string) string

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

// New returns a server over e. Close it to stop its background copying.
func New(e *engine.Engine, opts ...Option) *Server {
	s := &Server{e: e, procs: map[procKey]*procIO{}, stop: make(chan struct{})}
	for _, o := range opts {
		o(s)
	}
	return s
}

// Register adds both services to a Connect server.
func (s *Server) Register(srv *connect.Server) {
	sandboxv1connect.RegisterSandboxServiceHandler(srv, s)
	containerv1connect.RegisterContainerServiceHandler(srv, s)
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
