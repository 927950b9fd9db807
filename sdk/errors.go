package sdk

import (
	"context"
	"errors"

	"connectrpc.com/connect/v2"
	"github.com/containerd/errdefs"
)

// apiError is an error returned by the API, converted back to its
// containerd errdefs class: errors.Is(err, errdefs.ErrNotFound) and
// errors.As(err, **connect.Error) both work on it.
type apiError struct {
	class error
	cause *connect.Error
}

func (e *apiError) Error() string {
	if msg := e.cause.Message(); msg != "" {
		return msg
	}
	return e.class.Error()
}

func (e *apiError) Unwrap() []error { return []error{e.class, e.cause} }

// codeClasses maps Connect codes (the same numbers as gRPC codes) to the
// errdefs classes the server derived them from.
var codeClasses = map[connect.Code]error{
	connect.CodeCanceled:           context.Canceled,
	connect.CodeUnknown:            errdefs.ErrUnknown,
	connect.CodeInvalidArgument:    errdefs.ErrInvalidArgument,
	connect.CodeDeadlineExceeded:   context.DeadlineExceeded,
	connect.CodeNotFound:           errdefs.ErrNotFound,
	connect.CodeAlreadyExists:      errdefs.ErrAlreadyExists,
	connect.CodePermissionDenied:   errdefs.ErrPermissionDenied,
	connect.CodeResourceExhausted:  errdefs.ErrResourceExhausted,
	connect.CodeFailedPrecondition: errdefs.ErrFailedPrecondition,
	connect.CodeAborted:            errdefs.ErrAborted,
	connect.CodeOutOfRange:         errdefs.ErrOutOfRange,
	connect.CodeUnimplemented:      errdefs.ErrNotImplemented,
	connect.CodeInternal:           errdefs.ErrInternal,
	connect.CodeUnavailable:        errdefs.ErrUnavailable,
	connect.CodeDataLoss:           errdefs.ErrDataLoss,
	connect.CodeUnauthenticated:    errdefs.ErrUnauthenticated,
}

// fromAPI converts an error of a Connect call to an error of the matching
// errdefs class. Errors that are not Connect errors are returned as they
// are.
func fromAPI(err error) error {
	if err == nil {
		return nil
	}
	var ce *connect.Error
	if !errors.As(err, &ce) {
		return err
	}
	class, ok := codeClasses[ce.Code()]
	if !ok {
		class = errdefs.ErrUnknown
	}
	return &apiError{class: class, cause: ce}
}
