package apiserver

import (
	"context"
	"errors"

	"connectrpc.com/connect/v2"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"google.golang.org/grpc/status"
)

// MapErrors is a Connect server interceptor that maps the errors of the
// calls it wraps, unary and streaming alike, to Connect errors with the
// code of their containerd errdefs class (see toConnect).
func MapErrors(next connect.ServerFunc) connect.ServerFunc {
	return func(ctx context.Context, spec connect.Spec, stream connect.ServerStream) error {
		return toConnect(next(ctx, spec, stream))
	}
}

// toConnect maps an error with a containerd errdefs class to a Connect error
// with the matching code. gRPC and Connect share code numbers. Connect
// errors are kept as they are.
func toConnect(err error) error {
	if err == nil {
		return nil
	}
	var ce *connect.Error
	if errors.As(err, &ce) {
		return err
	}
	switch {
	case errors.Is(err, context.Canceled):
		return connect.NewError(connect.CodeCanceled, err.Error())
	case errors.Is(err, context.DeadlineExceeded):
		return connect.NewError(connect.CodeDeadlineExceeded, err.Error())
	}
	st, _ := status.FromError(errgrpc.ToGRPC(err))
	return connect.NewError(connect.Code(st.Code()), err.Error())
}
