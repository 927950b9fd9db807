// Package apiserver serves Magnetar's own API (magnetar.sandbox.v1,
// magnetar.container.v1, magnetar.image.v1 and magnetar.file.v1) over
// Connect. The same
// handlers run in the sandboxer daemon (Connect, gRPC and gRPC-Web over a
// unix socket) and in-process in the Go SDK's embedded mode.
//
// The work is direct mode's ([direct.Service], over an [engine.Engine]
// and, for images, an [image.Store]); this package converts the API's
// messages to and from its Go types, glues the streams, and maps its
// errdefs errors to Connect codes once, in an interceptor (see
// [Server.Register]).
package apiserver

import (
	"context"

	"connectrpc.com/connect/v2"

	"github.com/magnetar-io/magnetar/gen/magnetar/container/v1/containerv1connect"
	"github.com/magnetar-io/magnetar/gen/magnetar/file/v1/filev1connect"
	"github.com/magnetar-io/magnetar/gen/magnetar/image/v1/imagev1connect"
	"github.com/magnetar-io/magnetar/gen/magnetar/sandbox/v1/sandboxv1connect"
	"github.com/magnetar-io/magnetar/sdk/direct"
	"github.com/magnetar-io/magnetar/sdk/engine"
	"github.com/magnetar-io/magnetar/sdk/image"
)

// Server implements the sandbox, container, image and file services.
type Server struct {
	sandboxv1connect.UnimplementedSandboxServiceHandler
	containerv1connect.UnimplementedContainerServiceHandler
	imagev1connect.UnimplementedImageServiceHandler

	d *direct.Service
	// taskAddress, if set, reports the containerd task address of a
	// sandbox in its API representation.
	taskAddress func(sandboxID string) string
	directOpts  []direct.Option
}

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
	return func(s *Server) { s.directOpts = append(s.directOpts, direct.WithImageStore(st)) }
}

// WithOutputRingSize sets how many bytes of output are kept on disk per
// process of the containers made through the API (see
// [direct.WithOutputRingSize]); 0 keeps the default.
func WithOutputRingSize(n int64) Option {
	return func(s *Server) { s.directOpts = append(s.directOpts, direct.WithOutputRingSize(n)) }
}

// WithMaxFileSize bounds the bytes of a file written through the file
// service and of the files of one tar upload (see
// [direct.WithMaxFileSize]); 0 keeps the default.
func WithMaxFileSize(n int64) Option {
	return func(s *Server) { s.directOpts = append(s.directOpts, direct.WithMaxFileSize(n)) }
}

// WithHostAccess lets API callers reach the host: host directories as
// root file systems, bind mounts, raw OCI specs applied as given (see
// [direct.WithHostAccess]). Off by default: such requests fail with
// PERMISSION_DENIED.
func WithHostAccess(allow bool) Option {
	return func(s *Server) { s.directOpts = append(s.directOpts, direct.WithHostAccess(allow)) }
}

// WithDefaultNetworkBridge makes NETWORK_MODE_BRIDGE the mode of
// sandboxes that ask for none (NETWORK_MODE_UNSPECIFIED); otherwise it is
// NETWORK_MODE_NONE.
func WithDefaultNetworkBridge(bridge bool) Option {
	return func(s *Server) {
		if bridge {
			s.directOpts = append(s.directOpts, direct.WithDefaultNetwork(direct.NetworkBridge))
		}
	}
}

// New returns a server over e. Close it to stop its background copying.
func New(e *engine.Engine, opts ...Option) *Server {
	s := &Server{}
	for _, o := range opts {
		o(s)
	}
	s.d = direct.New(e, s.directOpts...)
	return s
}

// Register adds the sandbox, container, image and file services to a Connect
// server. Their handlers return errdefs errors; every method registered
// goes through [MapErrors] first, whatever interceptors srv has, so that
// these see the Connect codes.
func (s *Server) Register(srv *connect.Server) {
	inner := connect.NewServer(MapErrors)
	sandboxv1connect.RegisterSandboxServiceHandler(inner, s)
	containerv1connect.RegisterContainerServiceHandler(inner, s)
	imagev1connect.RegisterImageServiceHandler(inner, s)
	filev1connect.RegisterFileServiceHandler(inner, &fileServer{d: s.d})
	for spec := range inner.Specs() {
		srv.Register(connect.Method{Spec: spec, Handler: func(ctx context.Context, spec connect.Spec, stream connect.ServerStream) error {
			info, _ := connect.CallInfoForServerContext(ctx)
			return inner.Call(ctx, spec.Procedure, info, stream)
		}})
	}
}

// Close stops copying output and closes stdin pipes. Containers keep
// running.
func (s *Server) Close() error {
	return s.d.Close()
}
