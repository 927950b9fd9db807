package taskservice

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/containerd/errdefs"
	"github.com/containerd/ttrpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func TestErrorMapping(t *testing.T) {
	icpt := UnaryServerInterceptor()
	for _, tc := range []struct {
		err  error
		want codes.Code
	}{
		{nil, codes.OK},
		{fmt.Errorf("task: %w", errdefs.ErrNotFound), codes.NotFound},
		{fmt.Errorf("stream: %w", errdefs.ErrAlreadyExists), codes.AlreadyExists},
		{fmt.Errorf("bad: %w", errdefs.ErrInvalidArgument), codes.InvalidArgument},
		{context.Canceled, codes.Canceled},
		{status.Error(codes.Aborted, "as is"), codes.Aborted},
		{errors.New("plain"), codes.Unknown},
	} {
		_, err := icpt(context.Background(), func(any) error { return nil }, &ttrpc.UnaryServerInfo{}, func(context.Context, func(any) error) (any, error) {
			return nil, tc.err
		})
		if status.Code(err) != tc.want {
			t.Errorf("unary %v: %v, want %v", tc.err, err, tc.want)
		}
		if err := StreamError(tc.err); status.Code(err) != tc.want {
			t.Errorf("stream %v: %v, want %v", tc.err, err, tc.want)
		}
	}
}
