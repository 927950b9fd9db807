package controller

import (
	"context"

	"github.com/containerd/errdefs/pkg/errgrpc"
	"google.golang.org/grpc"
)

// UnaryServerInterceptor maps the errdefs errors that the [Controller]
// returns to gRPC status codes, as containerd's clients expect them
// (errgrpc), in one place for every method. Install it on the gRPC server
// that serves the controller, after interceptors that look at the codes.
func UnaryServerInterceptor() grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		resp, err := handler(ctx, req)
		return resp, errgrpc.ToGRPC(err)
	}
}
