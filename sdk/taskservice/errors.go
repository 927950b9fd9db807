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
