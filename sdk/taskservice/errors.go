package taskservice

import (
	"context"

	"github.com/containerd/errdefs/pkg/errgrpc"
	"github.com/containerd/ttrpc"
)

// UnaryServerInterceptor maps the errdefs errors that the service returns
// to ttrpc status codes, as containerd's clients expect them (errgrpc), in
// one place for every method.
func UnaryServerInterceptor() ttrpc.UnaryServerInterceptor {
	return func(ctx context.Context, unmarshal ttrpc.Unmarshaler, _ *ttrpc.UnaryServerInfo, method ttrpc.Method) (any, error) {
		resp, err := method(ctx, unmarshal)
		return resp, errgrpc.ToGRPC(err)
	}
}

// StreamError maps the error a ttrpc stream method returns the way
// UnaryServerInterceptor maps those of unary methods. ttrpc (v1.2) has a
// StreamServerInterceptor type but no server option to install one, so a
// stream method returns through StreamError once, where its body ends.
func StreamError(err error) error {
	return errgrpc.ToGRPC(err)
}
