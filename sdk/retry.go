package sdk

import (
	"context"
	"errors"
	"fmt"
	"time"

	"connectrpc.com/connect/v2"
	"github.com/containerd/errdefs"

	"github.com/magnetar-io/magnetar/gen/magnetar/container/v1/containerv1connect"
	"github.com/magnetar-io/magnetar/gen/magnetar/sandbox/v1/sandboxv1connect"
)

// DefaultRetryTimeout is how long a client made by [Dial] keeps retrying
// an idempotent call, or resuming a stream, while the sandboxer is
// unavailable (see [WithRetryTimeout]).
const DefaultRetryTimeout = 30 * time.Second

// Backoff between attempts: doubling from retryFirst up to retryMax.
const (
	retryFirst = 50 * time.Millisecond
	retryMax   = time.Second
)

// WithRetryTimeout sets how long the client retries a call that changes
// nothing, and resumes an output or event stream, while the sandboxer
// answers Unavailable or its connection breaks (it restarts: a crash of its
// worker, or a live upgrade), with a backoff from 50 ms doubling up to 1 s
// between attempts. 0 turns retries and resumption off. Default
// [DefaultRetryTimeout].
//
// Retried: the calls the API marks free of side effects (getting and
// listing sandboxes, containers, images, kinds, stats and processes) and
// those whose repetition changes nothing (waiting for a process, closing
// its stdin, resizing its terminal). Calls that create, start, signal,
// write or delete are not retried: their error says whether they may have
// happened.
func WithRetryTimeout(d time.Duration) Option {
	return func(o *options) error {
		if d < 0 {
			return fmt.Errorf("WithRetryTimeout: negative duration %v: %w", d, errdefs.ErrInvalidArgument)
		}
		o.retry, o.retrySet = d, true
		return nil
	}
}

// idempotentProcedures are the calls without side-effect marking in the
// API whose repetition changes nothing.
var idempotentProcedures = map[string]bool{
	containerv1connect.ContainerServiceWaitProcessProcedure: true,
	containerv1connect.ContainerServiceCloseStdinProcedure:  true,
	containerv1connect.ContainerServiceResizePtyProcedure:   true,
	// Sets a lifetime counted from the call: again is the same.
	sandboxv1connect.SandboxServiceSetSandboxTimeoutProcedure: true,
	// Pausing a paused sandbox, or resuming a running one, changes nothing.
	sandboxv1connect.SandboxServicePauseSandboxProcedure:  true,
	sandboxv1connect.SandboxServiceResumeSandboxProcedure: true,
}

func retryable(spec connect.Spec) bool {
	return spec.StreamType == connect.StreamTypeUnary &&
		(spec.IdempotencyLevel != connect.IdempotencyUnknown || idempotentProcedures[spec.Procedure])
}

// unavailable tells whether err means the sandboxer could not be reached
// or went away during the call: Unavailable, from the sandboxer (it shuts
// down) or from the transport, or a broken stream (a connection that ended
// in the middle of a message: the worker died) that the client's transport
// reports itself as Internal or Unknown.
func unavailable(err error) bool {
	if connect.CodeOf(err) == connect.CodeUnavailable || errdefs.IsUnavailable(err) {
		return true
	}
	var ce *connect.Error
	if !errors.As(err, &ce) || ce.IsRemote() {
		return false
	}
	return ce.Code() == connect.CodeInternal || ce.Code() == connect.CodeUnknown
}

// backoff paces the attempts of one outage: wait sleeps before the next
// attempt, or fails once the outage lasted longer than the budget.
type backoff struct {
	budget time.Duration
	start  time.Time
	delay  time.Duration
}

func newBackoff(budget time.Duration) *backoff { return &backoff{budget: budget} }

// wait returns nil after the pause before the next attempt, or err if the
// budget is spent or ctx ends first.
func (b *backoff) wait(ctx context.Context, err error) error {
	if b.budget <= 0 {
		return err
	}
	now := time.Now()
	if b.start.IsZero() {
		b.start, b.delay = now, retryFirst
	}
	if now.Add(b.delay).Sub(b.start) > b.budget {
		return fmt.Errorf("sandboxer unavailable for %v: %w", now.Sub(b.start).Round(time.Millisecond), err)
	}
	t := time.NewTimer(b.delay)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
		return err
	}
	b.delay = min(2*b.delay, retryMax)
	return nil
}

// reset starts a new outage: called after progress.
func (b *backoff) reset() { b.start = time.Time{} }

// retryInterceptor retries unary calls that change nothing while the
// sandboxer is unavailable.
func retryInterceptor(budget time.Duration) connect.ClientInterceptor {
	return func(next connect.ClientFunc) connect.ClientFunc {
		return func(ctx context.Context, spec connect.Spec) (connect.ClientStream, error) {
			if budget <= 0 || !retryable(spec) {
				return next(ctx, spec)
			}
			s := &retryStream{ctx: ctx, spec: spec, next: next, b: newBackoff(budget)}
			if err := s.open(); err != nil {
				return nil, err
			}
			return s, nil
		}
	}
}

// retryStream is a unary call that is made again, on a new stream, when
// it fails with Unavailable before its response came. It keeps the
// request for that.
type retryStream struct {
	ctx  context.Context
	spec connect.Spec
	next connect.ClientFunc
	b    *backoff

	cur      connect.ClientStream
	req      any
	sent     bool
	closed   bool
	received bool
}

func (s *retryStream) open() error {
	for {
		cur, err := s.next(s.ctx, s.spec)
		if err == nil {
			s.cur = cur
			return nil
		}
		if !unavailable(err) {
			return err
		}
		if err := s.b.wait(s.ctx, err); err != nil {
			return err
		}
	}
}

// again makes the call anew after err, up to sending its request.
func (s *retryStream) again(err error) error {
	for {
		if werr := s.b.wait(s.ctx, err); werr != nil {
			return werr
		}
		_ = s.cur.Close()
		if oerr := s.open(); oerr != nil {
			return oerr
		}
		err = nil
		if s.sent {
			err = s.cur.Send(s.req)
		}
		if err == nil && s.closed {
			err = s.cur.CloseSend()
		}
		if err == nil || !unavailable(err) {
			return err
		}
	}
}

func (s *retryStream) SendHeaders() error {
	err := s.cur.SendHeaders()
	if err != nil && unavailable(err) {
		return s.again(err)
	}
	return err
}

func (s *retryStream) Send(msg any) error {
	s.req, s.sent = msg, true
	err := s.cur.Send(msg)
	if err != nil && unavailable(err) {
		return s.again(err)
	}
	return err
}

func (s *retryStream) CloseSend() error {
	s.closed = true
	err := s.cur.CloseSend()
	if err != nil && unavailable(err) {
		return s.again(err)
	}
	return err
}

func (s *retryStream) Receive(msg any) error {
	for {
		err := s.cur.Receive(msg)
		if err == nil {
			s.received = true
			return nil
		}
		if s.received || !unavailable(err) {
			return err
		}
		if err := s.again(err); err != nil {
			return err
		}
	}
}

func (s *retryStream) Close() error { return s.cur.Close() }
